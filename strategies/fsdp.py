"""FSDP preset: shard each decoder layer of the HF model, found from the model when it is built.

Use as `trainer.strategy: {class_path: lit_swift.strategies.fsdp.FSDP}` or `configs/trainer/fsdp.yaml`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

ShardingStrategy = Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2", "NO_SHARD"]


def decoder_layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The transformer-block classes of an HF model: its `_no_split_modules`, else the `layers` list's class.

    Raises:
        ValueError: if the model names no block class and has no `layers`/`h`/`blocks` module list.
    """
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    classes = {type(m) for m in model.modules() if type(m).__name__ in names}
    if classes:
        return classes
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("layers", "h", "blocks") and isinstance(module, nn.ModuleList):
            return {type(module[0])}
    raise ValueError(
        f"cannot find the decoder-layer class of {type(model).__name__}: it has no `_no_split_modules` and "
        "no `layers` module list; set `layer_class` on the FSDP strategy"
    )


class LayerWrapPolicy:
    """Functional FSDP auto-wrap policy: one unit per module of `classes`, filled in once the model exists.

    Passed to FSDP at construction (hybrid sharding requires a policy up front) and completed by
    `FSDP.configure_wrapping` when the objective has built the model.
    """

    def __init__(self, classes: set[type[nn.Module]] | None = None):
        self.classes = set(classes or ())

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return True if recurse else isinstance(module, tuple(self.classes))


def import_class(path: str) -> type[nn.Module]:
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


class FSDP(FSDPStrategy):
    """Fully-sharded data parallel with one FSDP unit per decoder layer.

    The model is built in the objective's `configure_model`, so the layer class is looked up when the
    strategy wraps it, not when the YAML is read. `use_orig_params` stays on (Lightning's default): frozen
    base weights and trained LoRA weights can then share a unit, and the optimizer sees the original
    parameters.

    Checkpoints: `state_dict_type: full` gathers the whole model to rank 0's CPU memory at each save and
    the objective keeps only the trained weights (LoRA adapters whole, nothing of the base); FSDP cannot
    gather the adapters alone because they share flat parameters with frozen weights. `sharded` writes a
    folder of per-rank shards instead (fast for full fine-tuning of large models; convert it with
    `lightning.pytorch.utilities.consolidate_checkpoint`).

    Args:
        sharding_strategy: `FULL_SHARD` (ZeRO-3: params, grads, optimizer state), `SHARD_GRAD_OP` (ZeRO-2),
            `HYBRID_SHARD` (full shard inside a node, replicas across nodes), `NO_SHARD` (DDP).
        activation_checkpointing: recompute every decoder layer in backward (leave the objective's
            `gradient_checkpointing` off then, or layers are recomputed twice).
        layer_class: import path of the class to wrap (and checkpoint) instead of the detected one.
        cpu_offload: keep parameters and gradients in CPU memory between uses.
        state_dict_type: `full` (one file, gathered on rank 0) or `sharded` (a folder of shards).
        process_group_backend: `nccl` for GPUs; None picks by device.
        timeout_minutes: how long a collective may wait before the run fails.
    """

    def __init__(
        self,
        sharding_strategy: ShardingStrategy = "FULL_SHARD",
        activation_checkpointing: bool = False,
        layer_class: str | None = None,
        cpu_offload: bool = False,
        state_dict_type: Literal["full", "sharded"] = "full",
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ):
        policy = LayerWrapPolicy()
        super().__init__(
            auto_wrap_policy=policy,
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            state_dict_type=state_dict_type,
            process_group_backend=process_group_backend,
            timeout=timedelta(minutes=timeout_minutes),
        )
        self.layer_class, self.activation_checkpointing = layer_class, activation_checkpointing
        self.wrap_policy = policy

    def configure_wrapping(self, model: nn.Module) -> None:
        """Set the auto-wrap (and activation-checkpointing) policy from the built model."""
        classes = {import_class(self.layer_class)} if self.layer_class else decoder_layer_classes(model)
        self.wrap_policy.classes = classes
        if self.activation_checkpointing:
            self._activation_checkpointing_kwargs = {"check_fn": lambda m: isinstance(m, tuple(classes))}

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if not self.wrap_policy.classes:
            self.configure_wrapping(model)
        return super()._setup_model(model)


def is_sharded(module: nn.Module) -> bool:
    """Whether `module` holds FSDP units (its `state_dict()` is then a collective)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in module.modules())
