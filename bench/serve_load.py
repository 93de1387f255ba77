"""Load test of an OpenAI-compatible chat server: `lit-swift deploy` and, as the peer, `transformers serve`.

N streamed chat requests at a fixed concurrency through the official `openai` client; reports
failures, p50/p99 latency, p50/p99 time to first token, aggregate generated tokens/s, and the
tokens/s of the same kind of request sent one at a time (the batching gain is their ratio).

    python bench/serve_load.py --requests 1000 --concurrency 32                  # lit-swift deploy
    python bench/serve_load.py --server transformers --requests 1000 --concurrency 32 [--continuous_batching]
    python bench/serve_load.py --url http://127.0.0.1:8000/v1 --model NAME      # a running server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = [
    "the sea",
    "a red bicycle",
    "winter mornings",
    "prime numbers",
    "a library",
    "coffee",
    "volcanoes",
    "trains",
]


def prompt(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write two sentences about {TOPICS[i % len(TOPICS)]} (note {i})."}]


async def one(client, model: str, i: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    first, tokens, chunks = None, None, 0
    stream = await client.chat.completions.create(
        model=model, messages=prompt(i), max_tokens=max_tokens, temperature=0.7, seed=i, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            first = time.perf_counter() - start if first is None else first
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    # a server that sends no usage: one streamed chunk per token
    return {
        "latency": time.perf_counter() - start,
        "ttft": first or 0.0,
        "tokens": chunks if tokens is None else tokens,
    }


async def load(
    url: str, model: str, requests: int, concurrency: int, max_tokens: int, offset: int = 0
) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def guarded(i: int):
        async with gate:
            try:
                return await one(client, model, offset + i, max_tokens)
            except Exception as err:  # counted, never hidden
                failures.append(f"{type(err).__name__}: {err}"[:200])
                return None

    start = time.perf_counter()
    results = [r for r in await asyncio.gather(*(guarded(i) for i in range(requests))) if r]
    wall = time.perf_counter() - start
    await client.close()
    latencies = sorted(r["latency"] for r in results) or [0.0]
    ttfts = sorted(r["ttft"] for r in results) or [0.0]
    tokens = sum(r["tokens"] for r in results)
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {
        "requests": requests, "concurrency": concurrency, "failures": len(failures),
        "failure_examples": failures[:3], "wall_s": round(wall, 2), "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2), "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(pick(latencies, 0.99), 3), "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p99_s": round(pick(ttfts, 0.99), 3),
    }  # fmt: skip


def start(server: str, model: str, port: int, continuous: bool = False) -> tuple[subprocess.Popen, str]:
    """Start `lit-swift deploy` or `transformers serve` on `port`; returns the process and model name."""
    from lit_swift import models
    from tests.serve.helpers import start_server

    if server == "lit-swift":
        args = ["deploy", "--model", model, "--port", str(port), "--device", "cpu", "--max_batch_size", "32"]
        return start_server(args, port, timeout=900), model
    folder = models.resolve(model)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "transformers.cli.transformers",
        "serve",
        folder,
        "--port",
        str(port),
        "--device",
        "cpu",
        *(["--continuous-batching"] if continuous else []),
    ]
    log = open(f"/tmp/transformers-serve-{port}.log", "w")  # a pipe nobody reads would fill up and block it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    import httpx

    for _ in range(900):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, folder
        except httpx.HTTPError:
            time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError(open(log.name).read())
    raise RuntimeError("transformers serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=["lit-swift", "transformers"], default="lit-swift")
    parser.add_argument("--url", help="benchmark a running server at this /v1 base URL instead")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--single", type=int, default=8, help="requests sent one at a time for the base rate")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", help="append the JSON result to this file")
    parser.add_argument(
        "--continuous_batching",
        action="store_true",
        help="transformers serve only: its --continuous-batching mode (paged attention)",
    )
    args = parser.parse_args()
    proc, url, model = None, args.url, args.model
    if url is None:
        proc, model = start(args.server, args.model, args.port, args.continuous_batching)
        url = f"http://127.0.0.1:{args.port}/v1"
    try:
        asyncio.run(load(url, model, 2, 2, 4))  # warm-up
        single = asyncio.run(load(url, model, args.single, 1, args.max_tokens, offset=10**6))
        loaded = asyncio.run(load(url, model, args.requests, args.concurrency, args.max_tokens))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=120)
    result = {
        "server": args.url or args.server, "model": args.model, "max_tokens": args.max_tokens,
        "continuous_batching": args.continuous_batching,
        "single": single, "loaded": loaded,
        "speedup_vs_single": round(loaded["tokens_per_s"] / max(single["tokens_per_s"], 1e-9), 2),
        "exit_code": None if proc is None else proc.returncode,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
