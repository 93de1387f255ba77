#!/usr/bin/env python
"""Run lit-swift alone on the peer-benchmark job (no peer venvs) and report throughput, MFU, memory, loss.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/run_lit.py --model /tmp/benchmodel --mode pack --precision fp32 \
        --bs 1 --steps 10 --out runs/bench/pack-fp32
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("BENCH_DIR", "/work/shared/bench"))
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def host_info() -> dict:
    """CPU model, the SIMD flags that decide bf16 speed, cores, load; bf16 is emulated without avx512_bf16/amx."""
    model, flags = platform.processor(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    present = {f: f in flags for f in CPU_FLAGS}
    return {
        "cpu": model,
        "flags": present,
        "native_bf16": present["avx512_bf16"] or present["amx_bf16"],
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "platform": platform.platform(),
    }


def matmul_peak(max_n: int = 2048, budget_s: float = 0.5) -> dict:
    """GFLOP/s of square torch.matmul and F.linear (nn.Linear's op) in fp32 and bf16: the MFU denominators.

    Sizes double from 256 to `max_n` and stop once one product takes `budget_s`: without avx512_bf16 the
    bf16 kernels are emulated and a 2048² product can take a minute. The peak per dtype is the best rate seen.
    """
    import torch
    import torch.nn.functional as F

    out: dict = {"max_n": max_n, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for op_name, op in (("matmul", torch.matmul), ("linear", F.linear)):
            n, best = 256, 0.0
            while n <= max_n:
                a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
                op(a, b)  # warm-up
                t = time.perf_counter()
                op(a, b)
                took = time.perf_counter() - t
                best = max(best, 2 * n**3 / took / 1e9)
                out[f"{name}_{op_name}_n"] = n
                if took > budget_s:
                    break
                n *= 2
            out[f"{name}_{op_name}_gflops"] = best
        out[f"{name}_gflops"] = max(out[f"{name}_matmul_gflops"], out[f"{name}_linear_gflops"])
    return out


def model_shape(model_dir: str, layers: int | None = None) -> dict:
    """Linear-layer parameter count per token (decoder body, no embedding/head), hidden size and vocab."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads) * cfg.get("head_dim", h // heads)
    n_layers = layers or cfg["num_hidden_layers"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o; k, v; gate, up, down
    return {"linear_params": n_layers * per_layer, "hidden": h, "vocab": vocab, "layers": n_layers}


class TreeRSS:
    """Samples the summed RSS of a process and its children every 0.2 s (psutil), keeping the peak."""

    def __init__(self, pid: int):
        self.pid, self.peak_mb, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.wait(0.2):
            try:
                procs = [root, *root.children(recursive=True)]
                self.peak_mb = max(self.peak_mb, sum(p.memory_info().rss for p in procs) / 2**20)
            except psutil.Error:
                continue

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_env(args: argparse.Namespace, run_dir: Path, metrics_dir: Path) -> dict:
    """The variables run_peers.sh would export for this lit-* config, plus the probe's."""
    env = dict(os.environ)
    env.update(
        BENCH_CONFIG=f"lit-{args.task}{'-' + args.mode if args.task == 'sft' else ''}-{args.precision}",
        BENCH_TASK=args.task,
        BENCH_MODE=args.mode if args.task == "sft" else "",
        BENCH_PRECISION=args.precision,
        BENCH_MODEL=str(Path(args.model).resolve()),
        BENCH_DATA=args.data,
        BENCH_BS=str(args.bs),
        BENCH_STEPS=str(args.steps),
        BENCH_MAX_LEN=str(args.max_len),
        BENCH_LR=str(args.lr or (1e-3 if args.task == "sft" else 1e-4)),
        BENCH_SEED="42",
        BENCH_LORA_R="8",
        BENCH_LORA_ALPHA="32",
        BENCH_LORA_DROPOUT="0.05",
        BENCH_DPO_BETA="0.1",
        BENCH_RUN_DIR=str(run_dir),
        BENCH_LABEL=args.label or "lit",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if args.layers:
        env["LIT_EXTRA_ARGS"] = f'--model.init_args.config_overrides {{"num_hidden_layers":{args.layers}}}'
    hook = Path(args.hook) if args.hook else SHARED / "hook"
    if (hook / "sitecustomize.py").exists():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
        env["BENCH_METRICS_DIR"] = str(metrics_dir)
        env["BENCH_PAD_ID"] = str(pad_id(args.model))
    return env


def pad_id(model_dir: str) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return int(cfg.get("pad_token_id", 0) if cfg.get("pad_token_id") is not None else 0)


def csv_column(run_dir: Path, name: str) -> list[float]:
    """One column of the CSV logger's metrics.csv (every logged step), empty when absent."""
    files = sorted(glob.glob(str(run_dir / "**" / "metrics.csv"), recursive=True))
    if not files:
        return []
    with open(files[-1]) as f:
        return [float(r[name]) for r in csv.DictReader(f) if r.get(name) not in (None, "")]


def summarise(
    probe: dict,
    shape: dict,
    peak: dict,
    precision: str,
    tree_peak_mb: float | None = None,
    target_tokens: float | None = None,
) -> dict:
    """Headline numbers from one probe record (hook/sitecustomize.py's JSON) of a lit-swift run.

    MFU counts matmul FLOPs only: LoRA training does the forward (2N per token) and the input-gradient
    backward (2N) of the frozen linear layers, no weight gradient, so 4N per non-pad token; the LM head
    adds 4*H*V per target token when `target_tokens` is known; no-grad tokens (a DPO reference) add 2N.
    Attention scores (< 5% at these lengths) and LoRA's rank-8 matmuls are left out.
    """
    steps = probe.get("steps") or []
    t0, t_fwd = probe.get("t_proc_start"), probe.get("t_first_train_fwd")
    out = {"n_steps": len(steps), "precision_seen": probe.get("precision")}
    if not steps or t_fwd is None:
        return out
    nonpad = sum(s["nonpad"] for s in steps)
    slots = sum(s["total"] for s in steps)
    wall = steps[-1]["t"] - t_fwd
    out.update(
        tokens_nonpad=nonpad,
        pad_frac=1 - nonpad / slots if slots else None,
        loop_s=wall,
        nonpad_tok_per_s=nonpad / wall if wall > 0 else None,
        startup_to_first_fwd_s=t_fwd - t0 if t0 else None,
        startup_to_first_step_s=steps[0]["t"] - t0 if t0 else None,
        max_rows=max(s["max_rows"] for s in steps),
        max_len=max(s["max_len"] for s in steps),
    )
    if len(steps) >= 2:
        w2 = steps[-1]["t"] - steps[0]["t"]
        n2 = sum(s["nonpad"] for s in steps[1:])
        out.update(
            steady_s_per_step=w2 / (len(steps) - 1), steady_nonpad_tok_per_s=n2 / w2 if w2 > 0 else None
        )
    flops = 4 * shape["linear_params"] * nonpad + 2 * shape["linear_params"] * probe.get("nograd_tokens", 0)
    if target_tokens:
        flops += 4 * shape["hidden"] * shape["vocab"] * target_tokens
    peak_key = "fp32_gflops" if precision == "fp32" else "bf16_gflops"
    out["model_gflop"] = flops / 1e9
    if peak.get(peak_key) and wall > 0:
        out["mfu"] = flops / wall / 1e9 / peak[peak_key]
        out["mfu_vs"] = f"{peak_key.split('_')[0]} matmul peak {peak[peak_key]:.1f} GFLOP/s"
    losses = [x["loss"] for x in probe.get("logs", []) if isinstance(x, dict) and "loss" in x]
    if losses:
        out.update(first_loss=losses[0], final_loss=losses[-1], mean_loss=sum(losses) / len(losses))
    rss = [v for v in (tree_peak_mb, probe.get("tree_peak_rss_mb")) if v]
    out["peak_rss_gb"] = max(rss) / 1024 if rss else None
    return out


def markdown(result: dict) -> str:
    """A small results table: the config, the host, then one row of the headline numbers."""
    s, h, p = result["summary"], result["host"], result["peak"]

    def f(key: str, fmt: str = "{:.1f}") -> str:
        v = s.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    lines = [
        f"# lit-swift bench run: {result['config']}",
        "",
        f"Host: {h['cpu']}, {h['cores']} cores, load {h['loadavg'][0]:.2f} at start; avx512_bf16: "
        f"{h['flags']['avx512_bf16']}, amx_bf16: {h['flags']['amx_bf16']} "
        f"({'native bf16' if h['native_bf16'] else 'bf16 is EMULATED here: bf16 ratios are not meaningful'}). "
        f"Measured matmul/linear peak: fp32 {p.get('fp32_gflops', 0):.1f} GFLOP/s, "
        f"bf16 {p.get('bf16_gflops', 0):.1f} GFLOP/s.",
        "",
        "| config | non-pad tok/s (loop) | steady tok/s | pad % | MFU | startup s (1st fwd / 1st step) "
        "| peak RSS GB | final loss (mean) | weights / autocast / trained |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    prec = s.get("precision_seen") or {}
    dtypes = f"{prec.get('embedding_dtype', '-')} / {prec.get('autocast', '-')} / " + ",".join(
        prec.get("optimizer_param_dtypes", []) or ["-"]
    )
    lines.append(
        f"| {result['config']} | {f('nonpad_tok_per_s')} | {f('steady_nonpad_tok_per_s')} "
        f"| {f('pad_frac', '{:.1%}')} | {f('mfu', '{:.1%}')} "
        f"| {f('startup_to_first_fwd_s')} / {f('startup_to_first_step_s')} | {f('peak_rss_gb', '{:.2f}')} "
        f"| {f('final_loss', '{:.3f}')} ({f('mean_loss', '{:.3f}')}) | {dtypes} |"
    )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF model folder (make_model.py --kind smollm2)")
    p.add_argument("--data", default=None, help="jsonl (path#N allowed); default: the shared bench data")
    p.add_argument("--task", choices=("sft", "dpo"), default="sft")
    p.add_argument("--mode", choices=("pad", "padfree", "pack"), default="pad")
    p.add_argument("--precision", choices=("fp32", "amp", "bf16"), default="fp32")
    p.add_argument("--bs", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (sft) / 1e-4 (dpo), as the peers")
    p.add_argument("--layers", type=int, default=None, help="cut the model to N layers (quick checks)")
    p.add_argument("--hook", default=None, help="probe folder (default: $BENCH_DIR/hook)")
    p.add_argument("--peak-n", type=int, default=2048, help="largest matmul size for the peak; 0 skips it")
    p.add_argument("--label", default=None)
    p.add_argument("--out", default="runs/bench/lit", help="results.json and results.md go here")
    args = p.parse_args(argv)
    if args.data is None:
        args.data = str(SHARED / "data" / f"{args.task}.jsonl")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    run_dir, metrics_dir = out / "work", out / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    host = host_info()
    peak = matmul_peak(args.peak_n) if args.peak_n else {}
    env = bench_env(args, run_dir, metrics_dir)
    cmd = ["bash", str(HERE / "lit_cmd.sh")]
    t = time.time()
    with open(out / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        with TreeRSS(proc.pid) as rss:
            rc = proc.wait()
    probes = sorted(metrics_dir.glob("*.json"), key=lambda q: q.stat().st_mtime)
    probe = json.loads(probes[-1].read_text()) if probes else {}
    targets = sum(csv_column(run_dir, "train/tokens")) or None
    shape = model_shape(args.model, args.layers)
    summary = summarise(probe, shape, peak, args.precision, rss.peak_mb, targets)
    summary.update(rc=rc, process_wall_s=time.time() - t, probe=bool(probe))
    result = {
        "config": env["BENCH_CONFIG"],
        "args": vars(args),
        "host": host,
        "peak": peak,
        "shape": shape,
        "summary": summary,
        "steps": probe.get("steps", []),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(markdown(result))
    print((out / "results.md").read_text())
    if rc != 0:
        print(f"lit-swift exited with {rc}; see {out / 'run.log'}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
