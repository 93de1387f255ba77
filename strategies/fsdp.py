"""FSDP preset: shard each decoder layer of the HF model, found from the model when it is built.

Use as `trainer.strategy: {class_path: lit_swift.strategies.fsdp.FSDP}` or `configs/trainer/fsdp.yaml`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn

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

    Checkpoints: `state_dict_type: full` writes one file from rank 0. For lit-swift objectives, whose
    checkpoints hold only the trained weights (they load with `strict_loading = False`), only those are
    copied to rank 0's CPU memory, one FSDP unit at a time (each unit is still all-gathered whole on the
    GPUs: adapters share flat parameters with frozen weights); other modules get Lightning's whole-model
    gather. `sharded` writes a folder of per-rank shards instead (fast for full fine-tuning of large
    models; convert it with `lightning.pytorch.utilities.consolidate_checkpoint`). The HF folder beside
    each checkpoint is written from weights gathered the same way (`lit_swift.strategies.gather`).

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

    def lightning_module_state_dict(self) -> dict[str, Tensor]:
        """The checkpoint's weights; only the trained ones when the module saves only those."""
        if self._state_dict_type == "full" and not self.lightning_module.strict_loading:
            return full_state_dict(self.model, trainable_only=True, rank0_cpu=self.root_device.type != "cpu")
        return super().lightning_module_state_dict()


def full_state_dict(root: nn.Module, trainable_only: bool, rank0_cpu: bool = True) -> dict[str, Tensor]:
    """The unsharded state dict of an FSDP-wrapped `root` (FSDP1 units or FSDP2 `fully_shard`).

    A collective: every rank must call it. Names come out clean (no `_fsdp_wrapped_module.` or
    `_checkpoint_wrapped_module.`), keyed as in the unwrapped `root`. `root` must be the outermost
    module FSDP wrapped (`trainer.strategy.model`): parameters outside every decoder-layer unit belong
    to the root unit, and a submodule's own `state_dict()` would see only this rank's shard of them.

    Args:
        root: the FSDP-wrapped module.
        trainable_only: gather only parameters with `requires_grad` (the adapters of a LoRA run).
        rank0_cpu: copy the tensors to rank 0's CPU memory, one unit at a time, and return an empty dict
            on the other ranks (GPU training). False when training on the CPU: every rank then gets
            the tensors (FSDP1's CPU copy frees the gathered tensors before copying them when they
            already live on the CPU; the process crashes).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=rank0_cpu, ignore_frozen_params=trainable_only
    )
    return get_model_state_dict(root, options=options)
