"""The `server` rollout engine: an HTTP client of SGLang's native API (`lit-swift rollout` or SGLang).

The wire format lives here once, for both sides: `generate_body` / `completions_of` on the client,
`requests_of` / `output_of` in `lit-swift rollout`. Weights follow the trainer through the disk:
a full model is saved as an HF folder and loaded with `/update_weights_from_disk`; a LoRA policy
saves only its adapter and reloads it with `/load_lora_adapter`. With `prefetch`, `submit` returns at
once and the server generates while the trainer trains on the previous rollout (one step off-policy).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from lit_swift.rollout.engine import Completion, Request, RolloutEngine, SamplingParams

ADAPTER = "policy"
"""The LoRA adapter name the trainer loads its policy under (+ this engine's id and the version: several
trainers, DDP ranks or a resumed run can share one server)."""


def sampling_dict(sampling: SamplingParams, seed: int) -> dict[str, Any]:
    """SGLang `sampling_params` for one request (`sampling_seed` makes it reproducible)."""
    return {
        "max_new_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k if sampling.top_k > 0 else -1,
        "repetition_penalty": sampling.repetition_penalty,
        "stop_token_ids": list(sampling.stop_token_ids),
        "skip_special_tokens": False,
        "sampling_seed": seed,
    }


def generate_body(requests: list[Request], sampling: SamplingParams, lora: str | None) -> dict[str, Any]:
    body = {
        "input_ids": [r.prompt_ids for r in requests],
        "sampling_params": [sampling_dict(sampling, r.seed) for r in requests],
        "return_logprob": True,
        "logprob_start_len": -1,  # log-probs of the completion only
    }
    if lora is not None:
        body["lora_path"] = [lora] * len(requests)
    return body


def completions_of(outputs: list[dict]) -> list[Completion]:
    """`/generate` outputs -> Completions (token ids and their log-probs from `output_token_logprobs`)."""
    completions = []
    for out in outputs:
        meta = out["meta_info"]
        pairs = meta["output_token_logprobs"]  # [[logprob, token_id, text or null], ...]
        reason = (meta.get("finish_reason") or {}).get("type", "length")
        completions.append(
            Completion(
                token_ids=[int(p[1]) for p in pairs],
                logprobs=[float(p[0]) for p in pairs],
                finish_reason="length" if reason == "length" else "stop",
            )
        )
    return completions


def requests_of(body: dict[str, Any]) -> tuple[list[Request], list[SamplingParams], list[str | None]]:
    """A `/generate` body -> requests with their sampling settings and adapter names (server side)."""
    ids = body.get("input_ids")
    if not isinstance(ids, list) or not ids:
        raise ValueError("input_ids: a non-empty list of token ids, or a list of such lists")
    batched = isinstance(ids[0], list)
    ids = ids if batched else [ids]
    params = body.get("sampling_params") or {}
    params = params if isinstance(params, list) else [params] * len(ids)
    loras = body.get("lora_path")
    loras = loras if isinstance(loras, list) else [loras] * len(ids)
    if len(params) != len(ids) or len(loras) != len(ids):
        raise ValueError(f"{len(ids)} prompts but {len(params)} sampling_params and {len(loras)} lora_path")
    requests, samplings = [], []
    for prompt, p in zip(ids, params, strict=True):
        if not prompt or not all(isinstance(t, int) and t >= 0 for t in prompt):
            raise ValueError("input_ids: every prompt must be a non-empty list of token ids")
        greedy = p.get("temperature", 1.0) == 0 or p.get("top_k") == 1
        samplings.append(
            SamplingParams(
                max_new_tokens=int(p.get("max_new_tokens", 128)),
                temperature=0.0 if greedy else float(p.get("temperature", 1.0)),
                top_p=float(p.get("top_p", 1.0)),
                top_k=max(int(p.get("top_k", -1)), 0) if not greedy else 0,
                repetition_penalty=float(p.get("repetition_penalty", 1.0)),
                stop_token_ids=tuple(int(t) for t in p.get("stop_token_ids") or ()),
            )
        )
        seed = p.get("sampling_seed")
        requests.append(Request(list(prompt), int(seed) if seed is not None else secrets.randbits(62)))
    return requests, samplings, loras


def output_of(completion: Completion, prompt_len: int, decode) -> dict[str, Any]:
    """One `/generate` output in SGLang's shape."""
    return {
        "text": decode(completion.token_ids),
        "output_ids": completion.token_ids,
        "meta_info": {
            "prompt_tokens": prompt_len,
            "completion_tokens": len(completion.token_ids),
            "finish_reason": {"type": completion.finish_reason},
            "output_token_logprobs": [
                [lp, t, None] for lp, t in zip(completion.logprobs, completion.token_ids, strict=True)
            ],
        },
    }


class ServerEngine(RolloutEngine):
    """Rollouts from a `lit-swift rollout` or SGLang server over HTTP.

    Args:
        url: the server's base URL, e.g. `http://10.0.0.2:30000`.
        api_key: bearer key of the server, if it needs one.
        weights_dir: folder both sides can read where `sync_weights` writes the policy (default: a
            temporary folder, which is enough when the server runs on the same node).
        prefetch: generate in the background: GRPO then sends the next batch's prompts before it
            trains on the current rollout, which was generated with the weights of one optimizer step
            earlier (one step off-policy; pair it with `tis_cap`). Off by default.
        timeout: seconds one HTTP call may take.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:30000",
        api_key: str | None = None,
        weights_dir: str | None = None,
        prefetch: bool = False,
        timeout: float = 3600.0,
    ):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.own_dir = weights_dir is None
        self.weights_dir = Path(weights_dir or tempfile.mkdtemp(prefix="lit-swift-weights-"))
        self.lora: str | None = None
        self.name = f"{ADAPTER}-{secrets.token_hex(4)}"
        self.version = 0
        self.pool = ThreadPoolExecutor(1) if prefetch else None
        self.in_flight: Future | None = None

    @property
    def asynchronous(self) -> bool:  # type: ignore[override]
        return self.pool is not None

    def _post(self, route: str, body: dict) -> Any:
        answer = self.client.post(route, json=body)
        if answer.status_code != 200:
            raise RuntimeError(
                f"rollout server {self.client.base_url}{route}: HTTP {answer.status_code}: {answer.text[:500]}"
            )
        return answer.json()

    def _generate(
        self, requests: list[Request], sampling: SamplingParams, lora: str | None
    ) -> list[Completion]:
        outputs = self._post("/generate", generate_body(requests, sampling, lora))
        return completions_of(outputs if isinstance(outputs, list) else [outputs])

    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[Completion]:
        return self._generate(requests, sampling, self.lora)

    def submit(self, requests: list[Request], sampling: SamplingParams) -> Future[list[Completion]]:
        """With `prefetch`: send the requests from a background thread and return at once."""
        if self.pool is None:
            return super().submit(requests, sampling)
        self.in_flight = self.pool.submit(self._generate, requests, sampling, self.lora)
        return self.in_flight

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Save the policy under `weights_dir` and make the server load it.

        A generation still in flight finishes first, with the weights it was sent with.
        """
        from lit_swift import tuners

        if self.in_flight is not None:
            wait([self.in_flight])  # its error, if any, goes to whoever reads the future

        self.version += 1
        folder = self.weights_dir / f"v{self.version}"
        model.save_pretrained(str(folder))
        if tuners.is_peft(model):
            if self.lora is not None:
                self._post("/unload_lora_adapter", {"lora_name": self.lora})
            self.lora = f"{self.name}-v{self.version}"
            self._post("/load_lora_adapter", {"lora_name": self.lora, "lora_path": str(folder)})
        else:
            result = self._post("/update_weights_from_disk", {"model_path": str(folder)})
            if not result.get("success", False):
                raise RuntimeError(f"rollout server could not load {folder}: {result.get('message')}")
        shutil.rmtree(self.weights_dir / f"v{self.version - 1}", ignore_errors=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.lora is not None:  # leave the server as found (best effort: it may be gone already)
            try:
                self.client.post("/unload_lora_adapter", json={"lora_name": self.lora})
            except Exception:  # noqa: BLE001, S110
                pass
            self.lora = None
        self.client.close()
        if self.own_dir:
            shutil.rmtree(self.weights_dir, ignore_errors=True)
