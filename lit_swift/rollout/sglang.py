"""SGLang: the `colocate` rollout engine (an in-process `sglang.Engine` sharing the GPU with training)
and the command lines of SGLang's own server for `deploy --backend sglang` and `rollout`.

The only module that imports sglang (`pip install 'lit-swift[rollout]'`, CUDA only).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from lit_swift.rollout.engine import Completion, Request, RolloutEngine, SamplingParams
from lit_swift.rollout.remote import ADAPTER, completions_of, generate_body


def available() -> str | None:
    """None when SGLang can run here, else why not (one line)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if importlib.util.find_spec("sglang") is None:
        return "SGLang is not installed (pip install 'lit-swift[rollout]')"
    return None


def require() -> None:
    reason = available()
    if reason is not None:
        raise ValueError(f"the SGLang backend needs a CUDA GPU with SGLang installed: {reason}")


def hf_folders(model: str | None, adapter: str | None) -> tuple[str, str | None]:
    """(base model folder, PEFT adapter folder or None) for SGLang; a `.ckpt` is exported merged first."""
    from lit_swift.export.merge import CONFIG_NAME, export, read_config

    if adapter is not None and Path(adapter).suffix == ".ckpt":
        out = Path(tempfile.mkdtemp(prefix="lit-swift-sglang-")) / "merged"
        return str(export(adapter, str(out), merge_lora=True, model=model)), None
    if adapter is not None:
        folder = Path(adapter).expanduser()
        if not (folder / "adapter_config.json").exists():
            raise ValueError(f"adapter {folder} has no adapter_config.json (not a PEFT adapter folder)")
        import json

        run = (read_config(folder / CONFIG_NAME).get("model") or {}).get("init_args") or {}
        base = (
            model
            or run.get("model")
            or json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        )
        if not base:
            raise ValueError(f"adapter {folder} names no base model; pass it with --model")
        return models_resolve(base), str(folder.resolve())
    if model is None:
        raise ValueError(
            "give --model (spec, HF folder or export) and/or --adapter (adapter folder or .ckpt)"
        )
    return models_resolve(model), None


def models_resolve(spec: str) -> str:
    from lit_swift import models

    return models.resolve(spec)


def server_args(
    model: str | None,
    adapter: str | None,
    template: str | None,
    host: str,
    port: int,
    api_key: str | None,
    served_model_name: str | None,
    extra: list[str] | None,
) -> list[str]:
    """`python -m sglang.launch_server ...` for the model (and adapter, served under its folder's name)."""
    if template is not None:
        raise ValueError(
            "--template applies to --backend hf; SGLang serves with the tokenizer's own chat template"
        )
    base, lora = hf_folders(model, adapter)
    args = [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        base,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if api_key:
        args += ["--api-key", api_key]
    if served_model_name:
        args += ["--served-model-name", served_model_name]
    if lora is not None:
        args += ["--enable-lora", "--lora-paths", f"{Path(lora).name}={lora}"]
    return args + list(extra or [])


def exec_server(args: list[str]) -> None:
    """Replace this process with SGLang's server (signals then reach SGLang directly)."""
    require()
    print("lit-swift: starting SGLang:", " ".join(args), flush=True)
    os.execv(args[0], args)


class SGLangEngine(RolloutEngine):
    """`colocate`: an in-process `sglang.Engine` on the training GPU.

    After each optimizer step `sync_weights` pushes the policy into the engine: the full (LoRA-merged)
    weights with `update_weights_from_tensor`, or, with `sync: adapter`, the LoRA adapter through
    `load_lora_adapter`. With `offload`, the engine releases its weights and KV cache while the trainer
    works (`release_memory_occupation`) and takes them back to generate.

    Args:
        model: model spec or HF folder of the policy's base.
        mem_fraction_static: share of GPU memory SGLang keeps for weights and KV cache.
        sync: `tensor` (full weights, LoRA merged) or `adapter` (LoRA policies only).
        max_lora_rank: highest adapter rank SGLang prepares for (`sync: adapter`).
        offload: release GPU memory between rollouts.
        engine_args: more `sglang.Engine` arguments (SGLang's ServerArgs fields).
    """

    def __init__(
        self,
        model: str,
        mem_fraction_static: float = 0.4,
        sync: Literal["tensor", "adapter"] = "tensor",
        max_lora_rank: int = 64,
        offload: bool = True,
        engine_args: dict[str, Any] | None = None,
    ):
        require()
        import sglang

        kwargs = {"model_path": models_resolve(model), "mem_fraction_static": mem_fraction_static}
        if offload:
            kwargs["enable_memory_saver"] = True
        if sync == "adapter":
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, lora_target_modules=["all"])
        self.engine = sglang.Engine(**kwargs, **(engine_args or {}))
        self.sync, self.offload, self.lora, self.version = sync, offload, None, 0
        self.released = False
        self.tmp = Path(tempfile.mkdtemp(prefix="lit-swift-colocate-"))
        if offload:
            self._release()

    def _release(self) -> None:
        if self.offload and not self.released:
            self.engine.release_memory_occupation()
            self.released = True

    def _resume(self) -> None:
        if self.released:
            self.engine.resume_memory_occupation()
            self.released = False

    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[Completion]:
        self._resume()
        try:
            body = generate_body(requests, sampling, self.lora)
            outputs = self.engine.generate(
                input_ids=body["input_ids"],
                sampling_params=body["sampling_params"],
                return_logprob=True,
                logprob_start_len=-1,
                lora_path=body.get("lora_path"),
            )
            return completions_of(outputs if isinstance(outputs, list) else [outputs])
        finally:
            self._release()

    def sync_weights(self, model: torch.nn.Module) -> None:
        self._resume()
        try:
            if self.sync == "adapter":
                self._sync_adapter(model)
            else:
                self.engine.update_weights_from_tensor(list(merged_weights(model)), flush_cache=True)
        finally:
            self._release()

    def _sync_adapter(self, model: torch.nn.Module) -> None:
        from lit_swift import tuners

        if not tuners.is_peft(model):
            raise ValueError(
                "SGLangEngine(sync='adapter') needs a LoRA policy; use sync='tensor' for full fine-tuning"
            )
        self.version += 1
        folder = self.tmp / f"v{self.version}"
        model.save_pretrained(str(folder))
        if self.lora is not None:
            self.engine.unload_lora_adapter(self.lora)
        self.lora = f"{ADAPTER}-v{self.version}"
        self.engine.load_lora_adapter(self.lora, str(folder))

    def close(self) -> None:
        import shutil

        self.engine.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


@torch.no_grad()
def merged_weights(model: torch.nn.Module):
    """(HF name, tensor) of the policy with LoRA folded in, without changing the trained model."""
    from lit_swift import tuners

    if not tuners.is_peft(model):
        yield from model.state_dict().items()
        return
    model.merge_adapter()
    try:
        for name, tensor in model.get_base_model().state_dict().items():
            if "lora_" in name:
                continue
            yield name.replace(".base_layer.", "."), tensor.detach().clone()
    finally:
        model.unmerge_adapter()
