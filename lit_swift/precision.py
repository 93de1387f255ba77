"""`precision: auto`: bf16-mixed where bf16 matmuls run natively, 32-true where they are emulated.

`Trainer` is Lightning's Trainer with one more accepted value for `precision`, `auto`, resolved from the
device the run will use: a CUDA GPU with native bf16 (Ampere and later), or a CPU with `amx_bf16` or
`avx512_bf16`, gets `bf16-mixed` (fp32 weights and optimizer, bf16 autocast); anything else (an AVX2-only
CPU, where bf16 is emulated and several times slower than fp32, an older GPU, MPS) gets `32-true`. The
choice and its reason are printed once at start. An explicit precision is passed through untouched.
"""

from __future__ import annotations

import functools
import sys
from typing import Literal

import lightning as L
import torch
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
from lightning.pytorch.utilities import rank_zero_info

AUTO = "auto"
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (Linux /proc/cpuinfo names) under which oneDNN runs bf16 matmuls natively."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this host (empty off Linux, where /proc/cpuinfo does not exist)."""
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cuda_bf16() -> tuple[bool, str]:
    """Whether the current CUDA device runs bf16 natively, and its name."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    name = torch.cuda.get_device_name()
    return torch.cuda.is_bf16_supported(including_emulation=False), name


def uses_cuda(accelerator: object) -> bool:
    """Whether Lightning's accelerator choice lands on a CUDA GPU."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name in ("auto", "gpu", "cuda") or "cuda" in name:
        return torch.cuda.is_available()
    return False


def resolve(precision: object, accelerator: object = "auto") -> tuple[object, str | None]:
    """`(precision, reason)`: `auto` resolved for `accelerator`; any other value unchanged, no reason."""
    if precision != AUTO:
        return precision, None
    if uses_cuda(accelerator):
        native, name = cuda_bf16()
        if native:
            return "bf16-mixed", f"CUDA device {name} runs bf16 natively"
        return "32-true", f"CUDA device {name} has no native bf16 (pre-Ampere)"
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__
    if name not in ("auto", "cpu") and "cpu" not in name.lower():
        return "32-true", f"accelerator {name}: bf16 autocast is not chosen automatically there"
    found = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]
    if found:
        return "bf16-mixed", f"CPU with {'/'.join(found)}: native bf16 matmuls"
    return "32-true", (
        f"CPU without {'/'.join(BF16_CPU_FLAGS)}: bf16 matmuls are emulated, several times slower than fp32"
    )


class Trainer(L.Trainer):
    """Lightning's Trainer, plus `precision: auto` (see the module docstring).

    Args:
        precision: any Lightning precision (`32-true`, `bf16-mixed`, `bf16-true`, ...), or `auto`:
            `bf16-mixed` on a CUDA GPU with native bf16 or a CPU with amx_bf16/avx512_bf16, else `32-true`.
    """

    def __init__(self, *args, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs) -> None:
        precision, reason = resolve(precision, kwargs.get("accelerator", "auto"))
        if reason is not None:
            rank_zero_info(f"precision: auto -> {precision} ({reason})")
        super().__init__(*args, precision=precision, **kwargs)
