"""Optional fused GPU kernels: Liger (RMSNorm, RoPE, SwiGLU) patched into a loaded model; the only
module importing liger_kernel.

lit-swift computes the LM head and cross-entropy itself (only at labelled positions, chunked), so the
Liger patch leaves the model's own loss path alone and swaps the backbone's norm, rotary and MLP ops.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn


def check_liger() -> None:
    """Raise a clear error where Liger kernels cannot run (they are Triton kernels for CUDA GPUs)."""
    if importlib.util.find_spec("liger_kernel") is None:
        raise ValueError("liger_kernels: true needs the liger-kernel package: pip install 'lit-swift[gpu]'")
    if not torch.cuda.is_available():
        raise ValueError("liger_kernels: true runs only on a CUDA GPU (Triton kernels); turn it off on CPU")


def apply_liger(model: nn.Module) -> nn.Module:
    """Patch a transformers model in place with Liger's RMSNorm, RoPE and SwiGLU kernels."""
    check_liger()
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    return model
