"""The shared minimum of every causal-LM objective: model + tuner, optimizer, lean checkpoints, HF export.

Objectives subclass `CausalLMObjective` once and add their own `training_step`; nothing here knows
about a particular loss.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lit_swift import kernels, models, tuners
from lit_swift.atomic import write_folder
from lit_swift.data.collate import model_inputs
from lit_swift.optim import Cosine, Schedule
from lit_swift.types import IGNORE_INDEX


class CausalLMObjective(L.LightningModule):
    """Loads the model from a spec, applies the tuner and builds optimizer and schedule.

    Args:
        model: built-in alias (e.g. `smollm2-135m-instruct`), local HF folder or hub id.
        tuner: which weights train (`lit_swift.tuners.LoRA`, `Full`, `Freeze`, `QLoRA`).
        optimizer: optimizer class and its arguments, e.g. `torch.optim.AdamW` with `lr`.
        scheduler: learning-rate schedule over the run's optimizer steps.
        dtype: weight dtype; keep `float32` with trainer `precision: bf16-mixed` for bf16 compute.
        attn_implementation: `sdpa_varlen` (default: `sdpa`, but each packed sample attends only within
            itself, costing the sum of len^2 instead of row_len^2), `sdpa`, `eager`,
            `flash_attention_2` (CUDA + flash-attn).
        gradient_checkpointing: recompute activations in backward to save memory.
        config_overrides: model config fields to override, e.g. `{num_hidden_layers: 2}`.
        chunk_size: rows of LM-head logits computed at once.
        liger_kernels: patch the backbone with Liger's fused RMSNorm/RoPE/SwiGLU (CUDA + liger-kernel).
        compile: `torch.compile` the backbone's forward in place (state-dict keys unchanged).
    """

    def __init__(
        self,
        model: str,
        tuner: tuners.Tuner | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: Schedule | None = None,
        dtype: models.Dtype = "float32",
        attn_implementation: models.AttnImplementation = "sdpa_varlen",
        gradient_checkpointing: bool = False,
        config_overrides: dict[str, Any] | None = None,
        chunk_size: int = 2048,
        liger_kernels: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.model_spec = model
        self.tuner = tuner if tuner is not None else tuners.LoRA()
        self.optimizer_factory = optimizer
        self.schedule = scheduler if scheduler is not None else Cosine()
        self.dtype_name, self.attn_implementation = dtype, attn_implementation
        self.gradient_checkpointing, self.config_overrides = gradient_checkpointing, config_overrides
        self.chunk_size, self.liger_kernels, self.compile_backbone = chunk_size, liger_kernels, compile
        self.model: torch.nn.Module | None = None
        self.tokenizer = None
        self.strict_loading = False  # adapter checkpoints hold only trainable weights

    auto_class = "AutoModelForCausalLM"
    """The transformers auto class that loads the model (objectives with another head override it)."""
    task_type: tuners.TaskType = "CAUSAL_LM"
    """What sits on top of the backbone, for the tuner (peft's task types)."""

    def head_config(self) -> dict[str, Any]:
        """Config fields the objective's head needs (e.g. `num_labels: 1` for a scalar score)."""
        return {}

    def configure_model(self) -> None:
        if self.model is not None:
            return
        import transformers

        models.check_attn_implementation(self.attn_implementation)
        if self.liger_kernels:
            kernels.check_liger()  # fail before the model load
        self.tokenizer = models.load_tokenizer(self.model_spec)
        base = models.load_model(
            self.model_spec,
            dtype=self.dtype_name,
            attn_implementation=self.attn_implementation,
            gradient_checkpointing=self.gradient_checkpointing,
            config_overrides={
                **(self.config_overrides or {}),
                **self.tuner.load_kwargs(),
                **self.head_config(),
            },
            model_class=getattr(transformers, self.auto_class),
        )
        if self.liger_kernels:
            kernels.apply_liger(base)
        # from_pretrained returns eval mode (no dropout)
        self.model = self.tuner.apply(base, task_type=self.task_type).train()
        if self.compile_backbone:
            self.backbone.compile()
        trainable, total = tuners.count_parameters(self.model)
        # rank_zero_info: Lightning shows its INFO records on the console, a plain module logger would not
        rank_zero_info(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")

    # ----- forward helpers shared by objectives -----
    @property
    def backbone(self) -> torch.nn.Module:
        """The transformer without its LM head (adapters stay injected in its layers)."""
        lm = tuners.base_model(self.model)
        return getattr(lm, lm.base_model_prefix)

    def hidden_states(self, batch: dict[str, Tensor]) -> Tensor:
        """Final hidden states of the backbone (no LM head). # [B, T, H]"""
        return self.backbone(**model_inputs(batch)).last_hidden_state

    def target_hidden(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Hidden states, targets and the boolean mask at positions that have a target."""
        mask = batch["targets"] != IGNORE_INDEX  # [B, T]
        hidden = self.hidden_states(batch)[mask]  # [N, H]
        return hidden, batch["targets"][mask], mask

    @property
    def lm_head(self) -> torch.nn.Module:
        return tuners.base_model(self.model).get_output_embeddings()

    # ----- optimisation -----
    def configure_optimizers(self):
        groups = self.tuner.param_groups(self.model)
        scales = [g.pop("lr_scale", 1.0) for g in groups]
        optimizer = self.optimizer_factory(groups)
        for group, scale in zip(optimizer.param_groups, scales, strict=True):
            group["lr"] *= scale
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = self.schedule.build(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----- checkpoints -----
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Strategies save clean names (FSDP strips its wrapper prefixes), while `named_parameters` of a
        # wrapped model still carries them: compare both sides cleaned.
        trainable = {clean_name(n) for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if clean_name(k) in trainable
        }
        checkpoint["rng"] = rng_state()
        if self._trainer is not None:  # a module saved outside a fit has no layout to record
            checkpoint["layout"] = batch_layout(self.trainer)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied at the next training batch, not now: between loading and that batch Lightning still
        # builds dataloaders and runs hooks, while an uninterrupted run goes straight from save to batch.
        self._pending_rng = checkpoint.get("rng")
        if "layout" in checkpoint and self._trainer is not None:
            check_layout(checkpoint["layout"], batch_layout(self.trainer))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if getattr(self, "_pending_rng", None) is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def save_hf(
        self,
        folder: str | Path,
        config_file: str | Path | None = None,
        state_dict: dict[str, Tensor] | None = None,
    ) -> Path:
        """Write an HF-format folder: PEFT adapter (LoRA) or full safetensors weights, plus tokenizer.

        The write goes through `lit_swift.atomic.write_folder` (staged, fsync'ed, renamed), so a crash
        leaves the previous folder intact; inside a checkpoint save it commits with the `.ckpt`.

        Args:
            folder: the folder to write.
            config_file: the run's resolved config, copied in as `lit_swift_config.yaml`.
            state_dict: whole weights keyed as in `self.state_dict()` (`model.` + the model's names),
                gathered by the strategy when the ranks hold shards (FSDP, ZeRO-3); an adapter run may
                pass only the trainable entries. None reads `self.model` (unsharded training).
        """
        weights = None if state_dict is None else submodule_state(state_dict, "model")

        def write(tmp: Path) -> None:
            # PEFT picks the adapter entries by the model's module names, which must match the clean keys
            with unwrapped(self.model):
                self.model.save_pretrained(str(tmp), safe_serialization=True, state_dict=weights)
            self.tokenizer.save_pretrained(str(tmp))

        return write_folder(folder, write, config_file)


WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
"""Name parts that FSDP1 units, activation-checkpoint wrappers and `torch.compile` add to a module's
parameter names (FSDP2 adds none); state dicts written by the strategies leave them out."""


def clean_name(name: str) -> str:
    """A parameter or state-dict name without wrapper prefixes: the name of the unwrapped model."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


@contextlib.contextmanager
def unwrapped(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, every wrapped module of `model` sits where its wrapper was (names are clean).

    Only the module tree changes, no weights: FSDP1 units, activation-checkpoint wrappers and compiled
    modules are put back on exit.
    """
    attrs = [prefix.rstrip(".") for prefix in WRAPPER_PREFIXES]
    swaps = []
    for parent in list(model.modules()):
        if any(a in parent._modules for a in attrs):
            continue  # a wrapper's own link to its module stays
        for name, child in list(parent._modules.items()):
            inner = child
            while inner is not None and (attr := next((a for a in attrs if a in inner._modules), None)):
                inner = inner._modules[attr]
            if inner is not child:
                parent._modules[name] = inner
                swaps.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in reversed(swaps):
            parent._modules[name] = child


def submodule_state(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of `state_dict` under `prefix.`, keyed relative to that submodule."""
    start = prefix + "."
    return {k[len(start) :]: v for k, v in state_dict.items() if k.startswith(start)}


def batch_layout(trainer: L.Trainer) -> dict[str, int]:
    """How a run cuts its optimizer steps: rows per micro-batch, micro-batches per step, processes."""
    return {
        "batch_size": int(getattr(trainer.datamodule, "batch_size", 0) or 0),
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "world_size": trainer.world_size,
    }


def check_layout(saved: dict[str, int], now: dict[str, int]) -> None:
    """Warn when a resume cannot continue the saved run exactly.

    The DataModule's resume position is a per-rank count of micro-batches (`batches_done`), replayed on
    the new layout's plan: it lands on the rows the saved run had consumed only when rows per
    accumulation slot (`batch_size x world_size`) and micro-batches per step are unchanged, which also
    keeps the global batch, the loss normalisation and the schedule's length.
    """

    def rows(layout: dict[str, int]) -> int:
        return layout["batch_size"] * layout["world_size"] * layout["accumulate_grad_batches"]

    def describe(layout: dict[str, int]) -> str:
        return (
            f"batch_size {layout['batch_size']} x accumulate_grad_batches "
            f"{layout['accumulate_grad_batches']} x {layout['world_size']} process(es) = {rows(layout)} rows per step"
        )

    slots = [(d["batch_size"] * d["world_size"], d["accumulate_grad_batches"]) for d in (saved, now)]
    if slots[0] == slots[1]:
        return
    steps = "; the global batch changes too, and with it the optimizer steps and the schedule's length"
    rank_zero_warn(
        f"Resuming a run saved with {describe(saved)} on {describe(now)}: not an exact resume. The "
        "position inside an interrupted epoch is a per-process count of micro-batches, so a mid-epoch "
        "checkpoint continues from other rows than the saved run had reached (some are skipped or "
        f"repeated){steps if rows(saved) != rows(now) else ''}. Keep batch_size x devices x num_nodes and "
        "accumulate_grad_batches as saved to resume exactly (e.g. 2 processes x batch_size 2 -> 1 process "
        "x batch_size 4)."
    )


def rng_state() -> dict[str, Any]:
    """The random streams that training consumes (dropout, NEFTune): torch CPU and CUDA, Python."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
