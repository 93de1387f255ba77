"""Training throughput: real (non-pad) tokens/s, target tokens/s, samples/s, padding fraction and MFU.

Counts come from each batch's own masks, are summed over ranks, and are logged once per optimizer step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info

IGNORE_INDEX = -100

# Dense bf16 peak FLOP/s per device (vendor datasheets, no sparsity), matched against the CUDA device name.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}


def token_groups(batch: dict[str, Any]) -> list[str]:
    """Prefixes of a batch's token tensors: `""` for `input_ids`, `query_` and `doc_` for embedding pairs."""
    return [k.removesuffix("input_ids") for k in batch if k.endswith("input_ids")]


def batch_counts(batch: dict[str, Any]) -> dict[str, float]:
    """Real tokens, target tokens, samples and padded positions of one micro-batch (all token groups)."""
    groups = token_groups(batch)
    tokens = positions = 0
    for group in groups:
        ids = batch[group + "input_ids"]  # [B, T]
        positions += ids.numel()
        if group + "segment_ids" in batch:
            tokens += int((batch[group + "segment_ids"] >= 0).sum())
        elif group + "attention_mask" in batch:
            tokens += int(batch[group + "attention_mask"].sum())
        else:
            tokens += ids.numel()
    first = batch[groups[0] + "input_ids"]  # [B, T]
    labels = batch.get("targets", batch.get("labels"))  # per-token labels; a reranker's [B, G] scores are not
    per_token = labels is not None and labels.shape == first.shape
    targets = int((labels != IGNORE_INDEX).sum()) if per_token else tokens
    samples = int(batch["num_samples"]) if "num_samples" in batch else first.shape[0]
    return {"tokens": tokens, "targets": targets, "samples": samples, "positions": positions}


def flops_per_token(num_params: int, num_trainable: int, num_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token (PaLM appendix B convention, no causal halving of attention).

    A matmul weight costs 2 FLOPs per token forward, 2 for the activation gradient in backward (needed
    by every weight below a trained one, so frozen weights pay it too) and 2 for its own weight gradient
    (trained weights only): `4 * N + 2 * N_trained`, i.e. `6 * N` for full fine-tuning and about
    `4 * N + 6 * N_adapter` for LoRA. Attention scores and values add `4 * L * d * T` forward, three times
    that for training: `12 * L * d * T` with T the sequence length.
    """
    return 4 * num_params + 2 * num_trainable + 12 * num_layers * hidden * seq_len


def measure_cpu_peak_flops(size: int = 512, seconds: float = 0.2) -> float:
    """FLOP/s of an fp32 matmul on this CPU, measured once (a rough peak; shared machines vary)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start)


def device_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak for known GPUs, a measured matmul rate on CPU, None for unknown GPUs."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)
    if device.type == "cpu":
        return measure_cpu_peak_flops()
    return None


def model_dims(module: torch.nn.Module) -> tuple[int, int, int, int] | None:
    """(matmul params, trained matmul params, layers, hidden size) of the HF model inside `module`.

    Matmul params are all params except the input embedding (a lookup), plus the LM head when it is
    tied to that embedding. None when `module` holds no HF model (no MFU then).
    """
    config = next(
        (m.config for m in module.modules() if hasattr(getattr(m, "config", None), "hidden_size")), None
    )
    if config is None:
        return None
    embed = next(m for m in module.modules() if hasattr(m, "get_input_embeddings")).get_input_embeddings()
    skip = {id(p) for p in embed.parameters()}
    params = [p for p in module.parameters() if id(p) not in skip]
    num = sum(_numel(p) for p in params)
    trained = sum(_numel(p) for p in params if p.requires_grad)
    if getattr(config, "tie_word_embeddings", False):
        num += sum(_numel(p) for p in embed.parameters())
        trained += sum(_numel(p) for p in embed.parameters() if p.requires_grad)
    return num, trained, config.num_hidden_layers, config.hidden_size


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # DeepSpeed ZeRO-3 keeps the full size in ds_numel


class Throughput(L.Callback):
    """Logs `throughput/*` every optimizer step, averaged over the last `window` steps, all ranks summed.

    Metrics: `tokens_per_sec` (non-pad tokens, shown in the progress bar), `target_tokens_per_sec`
    (tokens with a loss), `samples_per_sec`, `padding_fraction` (pad share of the batch positions) and
    `mfu` (model FLOPs utilisation: `flops_per_token(...)` x tokens/s / (peak x devices)).

    Args:
        peak_flops: peak FLOP/s of one device; None uses the bf16 table for known GPUs (H100, H200,
            A100, ...) or measures an fp32 matmul on CPU. MFU is not logged when no peak is known.
        window: optimizer steps averaged in each logged value (the first step includes warm-up).
        clock: time source in seconds (tests inject a fake one).
    """

    def __init__(
        self, peak_flops: float | None = None, window: int = 10, clock: Callable[[], float] | None = None
    ):
        self.peak_flops, self.window = peak_flops, window
        self.clock = clock or time.perf_counter
        self.steps: deque[dict[str, float]] = deque(maxlen=window)
        self.dims: tuple[int, int, int, int] | None = None
        self._pending = self._zero()
        self._last_time: float | None = None
        self._last_step = 0

    @staticmethod
    def _zero() -> dict[str, float]:
        return {"tokens": 0, "targets": 0, "samples": 0, "positions": 0, "flops": 0.0}

    def on_train_start(self, trainer, pl_module) -> None:
        self.dims = model_dims(pl_module)
        if self.dims and trainer.world_size > 1 and isinstance(trainer.strategy, FSDPStrategy):
            # FSDP1 parameters are views of this rank's shard: sum them (FSDP2's DTensors and ZeRO-3's
            # `ds_numel` report whole sizes already)
            sizes = trainer.strategy.reduce(torch.tensor(self.dims[:2], dtype=torch.float64), reduce_op="sum")
            self.dims = (int(sizes[0]), int(sizes[1]), *self.dims[2:])
        if self.peak_flops is None:
            self.peak_flops = device_peak_flops(pl_module.device)
        if self.dims:
            rank_zero_info(
                f"Throughput: {self.dims[0]:,} matmul params, peak {self.peak_flops or 0:.3g} FLOP/s"
            )
        self._last_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._last_time is None:
            self._last_time = self.clock()
        counts = batch_counts(batch)
        seq_len = max(batch[g + "input_ids"].shape[-1] for g in token_groups(batch))
        counts["flops"] = counts["tokens"] * flops_per_token(*self.dims, seq_len) if self.dims else 0.0
        for key, value in counts.items():
            self._pending[key] += value

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:
            return  # accumulating: the optimizer step is not finished yet
        self._last_step = trainer.global_step
        now = self.clock()
        step = self._reduce(trainer, self._pending)
        step["seconds"] = now - self._last_time
        self.steps.append(step)
        self._pending, self._last_time = self._zero(), now
        metrics = self.compute(trainer.world_size)
        pl_module.log("throughput/tokens_per_sec", metrics.pop("tokens_per_sec"), prog_bar=True, batch_size=1)
        pl_module.log_dict({f"throughput/{k}": v for k, v in metrics.items()}, batch_size=1)

    @staticmethod
    def _reduce(trainer, counts: dict[str, float]) -> dict[str, float]:
        if trainer.world_size == 1:
            return dict(counts)
        keys = list(counts)
        total = trainer.strategy.reduce(
            torch.tensor([counts[k] for k in keys], dtype=torch.float64), reduce_op="sum"
        )
        return dict(zip(keys, total.tolist(), strict=True))

    def compute(self, num_devices: int = 1) -> dict[str, float]:
        """Rates over the window's steps (counts are already summed over ranks)."""
        total = {
            k: sum(s[k] for s in self.steps) for k in ("tokens", "targets", "samples", "positions", "flops")
        }
        seconds = max(sum(s["seconds"] for s in self.steps), 1e-9)
        metrics = {
            "tokens_per_sec": total["tokens"] / seconds,
            "target_tokens_per_sec": total["targets"] / seconds,
            "samples_per_sec": total["samples"] / seconds,
            "padding_fraction": 1 - total["tokens"] / max(total["positions"], 1),
            "tokens_per_sec_per_device": total["tokens"] / seconds / num_devices,
        }
        if self.peak_flops and self.dims:
            metrics["mfu"] = total["flops"] / seconds / (self.peak_flops * num_devices)
        return metrics
