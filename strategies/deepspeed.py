"""DeepSpeed ZeRO-2/3 presets with optional CPU offload; the only lit-swift module that needs `deepspeed`.

`zero_config(...)` builds the DeepSpeed config dict (pure, testable without deepspeed); `DeepSpeedZeRO`
hands it to Lightning's `DeepSpeedStrategy`. Install with `pip install 'lit-swift[deepspeed]'`.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from lightning.pytorch.strategies import DeepSpeedStrategy

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
    `gradient_clip_val`), so the YAML stays the single source.

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
    """Lightning's `DeepSpeedStrategy` configured by `zero_config`.

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
