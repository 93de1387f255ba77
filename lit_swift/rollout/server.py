"""`lit-swift rollout`: a generation server for GRPO's `server` mode, speaking SGLang's native API.

On a GPU with SGLang installed it starts SGLang's own server; otherwise it serves the same routes
(`/generate` over token ids with per-token log-probs, `/update_weights_from_disk`,
`/load_lora_adapter`, `/unload_lora_adapter`, `/health`) from this process with the HF engine, so
the trainer's `ServerEngine` is the same code against either.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Literal

from lit_swift import models


class HFRolloutState:
    """The base model, its LoRA adapters (through PEFT, injected into the base in place) and the engine."""

    def __init__(self, model, tokenizer, engine):
        self.model, self.tokenizer, self.engine = model, tokenizer, engine
        self.peft = None  # PeftModel wrapping `model` once an adapter is loaded
        self.lock = threading.Lock()  # one generation or weight change at a time

    def generate(self, body: dict[str, Any]) -> list[dict]:
        from lit_swift.rollout.remote import output_of, requests_of

        requests, samplings, loras = requests_of(body)
        unknown = sorted({name for name in loras if name is not None} - self.adapters())
        if unknown:
            raise ValueError(f"lora_path: no adapter loaded as {unknown}; loaded: {sorted(self.adapters())}")
        outputs: list[dict | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(samplings, loras, strict=True)):
            groups.setdefault(key, []).append(i)
        with self.lock:
            for (sampling, lora), rows in groups.items():
                completions = self._run(lora, [requests[i] for i in rows], sampling)
                for i, completion in zip(rows, completions, strict=True):
                    outputs[i] = output_of(completion, len(requests[i].prompt_ids), self.tokenizer.decode)
        return outputs

    def _run(self, lora: str | None, requests, sampling):
        if self.peft is None:
            return self.engine.generate(requests, sampling)
        if lora is None:
            with self.peft.disable_adapter():
                return self.engine.generate(requests, sampling)
        self.peft.set_adapter(lora)
        return self.engine.generate(requests, sampling)

    def adapters(self) -> set[str]:
        return set(self.peft.peft_config) if self.peft is not None else set()

    def load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        with self.lock:
            if name in self.adapters():
                raise ValueError(f"lora_name: an adapter named {name!r} is already loaded")
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            else:
                self.peft.load_adapter(path, adapter_name=name)
            self.peft.eval()

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters():
                raise ValueError(f"lora_name: no adapter named {name!r} is loaded")
            if len(self.adapters()) == 1:
                self.peft.unload()  # removes the LoRA layers from the base model in place
                self.peft = None
            else:
                self.peft.delete_adapter(name)

    def update_weights(self, path: str) -> None:
        """Load a full model folder's weights into the served model (same architecture)."""
        from transformers import AutoModelForCausalLM

        with self.lock:
            if self.peft is not None:
                raise ValueError(
                    f"unload the LoRA adapters {sorted(self.adapters())} before updating base weights"
                )
            new = AutoModelForCausalLM.from_pretrained(path, dtype=self.model.dtype)
            missing, unexpected = self.model.load_state_dict(new.state_dict(), strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{path} does not fit the served model: missing {missing[:3]}, unexpected {unexpected[:3]}"
                )


def make_app(state: HFRolloutState, name: str, api_key: str | None = None):
    from fastapi import Body
    from starlette.concurrency import run_in_threadpool

    from lit_swift.serve.http import APIError, build_app

    app = build_app("lit-swift rollout", api_key)

    async def call(fn, *args):
        try:
            return await run_in_threadpool(fn, *args)
        except ValueError as err:
            raise APIError(400, str(err)) from err

    @app.post("/generate")
    async def generate(body: dict = Body(...)):
        outputs = await call(state.generate, body)
        return outputs if isinstance(body.get("input_ids", [None])[0], list) else outputs[0]

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(body: dict = Body(...)):
        await call(state.update_weights, _field(body, "model_path"))
        return {"success": True, "message": f"loaded {body['model_path']}"}

    @app.post("/load_lora_adapter")
    async def load_lora_adapter(body: dict = Body(...)):
        await call(state.load_adapter, _field(body, "lora_name"), _field(body, "lora_path"))
        return {"success": True, "loaded_adapters": sorted(state.adapters())}

    @app.post("/unload_lora_adapter")
    async def unload_lora_adapter(body: dict = Body(...)):
        await call(state.unload_adapter, _field(body, "lora_name"))
        return {"success": True, "loaded_adapters": sorted(state.adapters())}

    @app.get("/get_model_info")
    async def model_info() -> dict:
        return {"model_path": name, "is_generation": True}

    return app


def _field(body: dict, key: str) -> str:
    from lit_swift.serve.http import APIError

    if not isinstance(body.get(key), str) or not body[key]:
        raise APIError(400, f"{key}: a non-empty string is required", key)
    return body[key]


def rollout(
    model: str | None = None,
    backend: Literal["auto", "hf", "sglang"] = "auto",
    host: str = "127.0.0.1",
    port: int = 30000,
    api_key: str | None = None,
    max_lora_rank: int | None = None,
    dtype: models.Dtype = "auto",
    config_overrides: dict[str, Any] | None = None,
    device: str = "auto",
    sglang_args: list[str] | None = None,
) -> None:
    """Serve a model for GRPO's `server` mode (SGLang's native API).

    Args:
        model: model spec (alias, hub id) or HF folder; adapters are loaded at run time.
        backend: `sglang` (SGLang's own server, GPU), `hf` (this process, CPU or GPU), `auto`
            (sglang when CUDA and SGLang are present, else hf).
        host: interface to listen on.
        port: TCP port to listen on.
        api_key: require `Authorization: Bearer <api_key>` on every route but /health.
        max_lora_rank: let SGLang load LoRA adapters up to this rank at run time (sglang backend).
        dtype: weight dtype; `auto` keeps the checkpoint's (hf backend).
        config_overrides: model config fields to override, e.g. `{num_hidden_layers: 2}` (hf backend).
        device: `auto` (CUDA when available), `cpu`, `cuda`, ... (hf backend).
        sglang_args: extra arguments for SGLang's server, e.g. `[--mem-fraction-static, "0.8"]`.
    """
    from lit_swift.rollout import sglang

    if model is None:
        raise ValueError("give --model (spec or HF folder) to serve")
    if backend == "sglang" or (backend == "auto" and sglang.available() is None):
        lora = ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--lora-target-modules", "all"]
        extra = [*(lora if max_lora_rank else []), *(sglang_args or [])]
        sglang.exec_server(sglang.server_args(model, None, None, host, port, api_key, None, extra))
    import torch

    from lit_swift.rollout.hf import HFEngine
    from lit_swift.serve.http import serve

    net = models.load_model(model, dtype=dtype, config_overrides=config_overrides)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    tokenizer = models.load_tokenizer(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    engine = HFEngine(pad_token_id=pad)
    engine.sync_weights(net.to(device).eval())
    state = HFRolloutState(net, tokenizer, engine)
    print(f"lit-swift rollout: serving {model!r} on http://{host}:{port} (pid {os.getpid()})", flush=True)
    serve(make_app(state, model, api_key), host, port)
