"""Whole weights out of sharded training: what checkpoint writers call, on every rank, before rank 0 writes.

One code path per kind of strategy, chosen by the strategy object: FSDP (Lightning's FSDP1 strategy and
the FSDP2 `ModelParallelStrategy`) -> `fsdp.full_state_dict`; DeepSpeed ZeRO-3 -> `deepspeed.zero3_state_dict`;
everything else keeps whole weights on every rank and needs no gathering.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from torch import Tensor


def shards_weights(strategy: Strategy) -> bool:
    """Whether the ranks hold only shards of the weights (reading the module on one rank is not enough)."""
    if isinstance(strategy, DeepSpeedStrategy):
        return strategy.zero_stage_3
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def gather_state_dict(strategy: Strategy, trainable_only: bool) -> dict[str, Tensor] | None:
    """The LightningModule's whole state dict (keys as in its unwrapped `state_dict()`) on rank 0.

    A collective under sharding strategies: every rank must call it, and every rank but 0 gets an empty
    dict (on a CPU run of FSDP every rank gets the tensors, see `fsdp.full_state_dict`).

    Args:
        strategy: the trainer's strategy, set up (the model wrapped).
        trainable_only: gather only parameters with `requires_grad` (the adapters of a LoRA run).

    Returns:
        None when the strategy does not shard weights: read the module itself.
    """
    if not shards_weights(strategy):
        return None
    if isinstance(strategy, DeepSpeedStrategy):
        from lit_swift.strategies.deepspeed import zero3_state_dict

        return zero3_state_dict(strategy.lightning_module, trainable_only)
    from lit_swift.strategies.fsdp import full_state_dict

    # FSDP1 wraps the LightningModule itself (strategy.model); FSDP2 shards it in place (the same module)
    return full_state_dict(strategy.model, trainable_only, rank0_cpu=strategy.root_device.type != "cpu")
