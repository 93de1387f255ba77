"""DeepSpeed ZeRO-2/3 presets with optional CPU offload; the only lit-swift module that needs `deepspeed`.

`zero_config(...)` builds the DeepSpeed config dict (pure, testable without deepspeed); `DeepSpeedZeRO`
hands it to Lightning's `DeepSpeedStrategy`; `zero3_state_dict` gathers partitioned weights for saving.
Install with `pip install 'lit-swift[deepspeed]'`.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor, nn

INSTALL_HINT = "DeepSpeed is not installed: `pip install 'lit-swift[deepspeed]'` (needs CUDA and a compiler)."


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def zero_config(
    stage: Literal[2, 3] = 2,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    pin_memory: bool = True,
    overlap_comm: bool = True,
    bucket_size: int = 200_000_000,
    gather_16bit_weights_on_save: bool = True,
) -> dict[str, Any]:
    """The DeepSpeed config for ZeRO `stage` (keys as in deepspeed.ai/docs/config-json).

    Precision (`bf16`/`fp16`), `gradient_accumulation_steps` and `gradient_clipping` are left out:
    Lightning fills them in from the trainer (`precision`, `accumulate_grad_batches`,
    `gradient_clip_val`), so the YAML stays the single source. (The engine's own division of the loss
    by `gradient_accumulation_steps` is switched off by `DeepSpeedZeRO.backward`, not here.)

    Raises:
        ValueError: for a stage other than 2 or 3, or parameter offload below stage 3.
    """
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage must be 2 or 3, got {stage}")
    if offload_params and stage != 3:
        raise ValueError("offload_params needs ZeRO stage 3 (stage 2 does not partition parameters)")
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": bucket_size,
    }
    if stage == 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=bucket_size, reduce_scatter=True)
    else:
        zero.update(
            stage3_prefetch_bucket_size=bucket_size,
            stage3_param_persistence_threshold=1_000_000,
            stage3_max_live_parameters=1_000_000_000,
            stage3_max_reuse_distance=1_000_000_000,
            stage3_gather_16bit_weights_on_model_save=gather_16bit_weights_on_save,
        )
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    return {
        "zero_optimization": zero,
        # Lightning runs the loop; this only feeds DeepSpeed's own throughput logging
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,  # torch.optim.AdamW from the YAML, not DeepSpeed's Adam
        "wall_clock_breakdown": False,
    }


class DeepSpeedZeRO(DeepSpeedStrategy):
    """Lightning's `DeepSpeedStrategy` configured by `zero_config`, with the loss scaled once.

    Lightning's loop divides every micro-batch loss by `accumulate_grad_batches` (lit-swift objectives
    build on that to get a token-weighted mean over the whole optimizer step), and DeepSpeed's
    `engine.backward` divides by `gradient_accumulation_steps` (the same number) again. `backward` here
    turns the engine's division off, so the gradients equal those of DDP/FSDP with the same YAML. Plain
    `strategy: deepspeed_stage_*` strings get Lightning's class and keep the double division.

    Args:
        stage: 2 shards optimizer state and gradients; 3 also shards the parameters.
        offload_optimizer: keep optimizer state (and its step) on the CPU (ZeRO-Offload).
        offload_params: keep parameters on the CPU between uses (stage 3, ZeRO-Infinity style).
        pin_memory: page-locked CPU buffers for offload (faster copies, more host memory).
        overlap_comm: overlap gradient reduction with backward.
        bucket_size: elements per communication bucket.
        gather_16bit_weights_on_save: stage 3 gathers full 16-bit weights when saving.
        process_group_backend: `nccl` for GPUs; None picks by device.
        config_overrides: extra top-level DeepSpeed config entries, merged over the preset.

    Raises:
        ImportError: when deepspeed is not installed (`pip install 'lit-swift[deepspeed]'`).
    """

    def __init__(
        self,
        stage: Literal[2, 3] = 2,
        offload_optimizer: bool = False,
        offload_params: bool = False,
        pin_memory: bool = True,
        overlap_comm: bool = True,
        bucket_size: int = 200_000_000,
        gather_16bit_weights_on_save: bool = True,
        process_group_backend: str | None = None,
        config_overrides: dict[str, Any] | None = None,
    ):
        if not deepspeed_available():
            raise ImportError(INSTALL_HINT)
        config = zero_config(
            stage, offload_optimizer, offload_params, pin_memory, overlap_comm, bucket_size,
            gather_16bit_weights_on_save,
        )  # fmt: skip
        super().__init__(
            config={**config, **(config_overrides or {})}, process_group_backend=process_group_backend
        )

    def backward(self, closure_loss: Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> Tensor:
        """Backward through the engine without its `1 / gradient_accumulation_steps` (Lightning applied it)."""
        return super().backward(closure_loss, optimizer, *args, scale_wrt_gas=False, **kwargs)


def zero3_state_dict(module: nn.Module, trainable_only: bool) -> dict[str, Tensor]:
    """The whole weights of a ZeRO-3-partitioned `module`, keyed as in `module.state_dict()`.

    A collective: every rank must call it. Parameters are all-gathered one at a time (peak memory: one
    whole parameter), copied to rank 0's CPU memory, and partitioned again; buffers are never
    partitioned and are copied as they are. Tied weights appear under each of their names.

    Args:
        module: the model inside the engine (the LightningModule).
        trainable_only: gather only parameters with `requires_grad` (the adapters of a LoRA run).

    Returns:
        The CPU tensors on rank 0; an empty dict on the other ranks.
    """
    import deepspeed

    rank0 = torch.distributed.get_rank() == 0
    state: dict[str, Tensor] = {}
    copies: dict[int, Tensor] = {}
    for name, value in module.state_dict(keep_vars=True).items():
        if trainable_only and not value.requires_grad:
            continue
        if id(value) not in copies:
            # a no-op for tensors DeepSpeed did not partition (buffers, ZeRO-2)
            with deepspeed.zero.GatheredParameters([value], modifier_rank=None):
                copies[id(value)] = value.detach().to("cpu", copy=True) if rank0 else value
        if rank0:
            state[name] = copies[id(value)]
    return state
