"""DPO-family preference optimisation: chosen and rejected in one forward, any `PreferenceLoss` injected.

The reference log-probs come from the adapter-disabled policy (LoRA: no second model in memory), a
frozen copy of the initial model (full or freeze tuning), or a cache computed once before training
(`precompute_ref`); reference-free losses (SimPO, ORPO, CPO) compute none.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lit_swift import tuners
from lit_swift.data.collate import model_inputs
from lit_swift.losses.causal_lm import token_logps
from lit_swift.losses.functional import sequence_logps
from lit_swift.losses.preference import PairLogps, PreferenceLoss, SigmoidDPO
from lit_swift.objectives.base import CausalLMObjective
from lit_swift.types import IGNORE_INDEX


def model_sequence_logps(
    model: nn.Module, batch: dict[str, Tensor], chunk_size: int = 2048
) -> tuple[Tensor, Tensor]:
    """Summed target-token log-probs of every sequence of `batch` under `model`, and token counts.

    Works for padded and packed batches alike: sequences are told apart by `segment_ids`.

    Returns:
        `(sums, counts)` in segment order. # [S], [S]
    """
    lm = tuners.base_model(model)
    backbone = getattr(lm, lm.base_model_prefix)
    mask = batch["targets"] != IGNORE_INDEX  # [R, T]
    hidden = backbone(**model_inputs(batch)).last_hidden_state[mask]  # [N, H]
    logps = token_logps(hidden, lm.get_output_embeddings(), batch["targets"][mask], chunk_size)  # [N]
    return sequence_logps(logps, batch["segment_ids"][mask], int(batch["num_samples"]))


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` that never trains (the reference for full/freeze tuning)."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def step_scale(module: CausalLMObjective, batch: dict[str, Any], num_rows: int) -> float:
    """Turn a per-micro-batch row mean into `sum over the step's rows / rows in the step`.

    Lightning divides by the accumulation steps and DDP averages over ranks; undoing both makes a
    ragged last micro-batch weigh its rows like every other row.
    """
    if "step_num_rows" not in batch:
        return 1.0
    trainer = module.trainer
    return num_rows * trainer.accumulate_grad_batches * trainer.world_size / batch["step_num_rows"]


class DPO(CausalLMObjective):
    """Pairwise preference optimisation (DPO, IPO, SimPO, ORPO, ... by `loss` class_path).

    Args:
        loss: the preference loss (`lit_swift.losses.preference.SigmoidDPO` by default).
        precompute_ref: compute reference log-probs once over train and validation data at fit start
            (no reference forward per step, no model copy for full fine-tuning); kept in checkpoints.
        **kwargs: model, tuner, optimizer, scheduler and model options of `CausalLMObjective`.
    """

    def __init__(
        self, *args: Any, loss: PreferenceLoss | None = None, precompute_ref: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.loss = loss if loss is not None else SigmoidDPO()
        self.precompute_ref = precompute_ref
        self.reference: nn.Module | None = None
        self.ref_cache: Tensor | None = None  # [num_row_ids, 2] (chosen, rejected)
        self.val_loss, self.val_accuracy = MeanMetric(), MeanMetric()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        if self.loss.needs_reference and not self.precompute_ref and not self.tuner.is_adapter:
            self.reference = frozen_copy(self.model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # Lightning switches every submodule to train mode
        return self

    # ----- reference -----
    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor]) -> Tensor:
        """Reference summed log-probs of the batch's 2B sequences. # [2B]"""
        if self.precompute_ref:
            assert self.ref_cache is not None, "precomputed reference log-probs are missing"
            pairs = self.ref_cache.to(self.device)[batch["row_ids"]]  # [B, 2]
            return pairs.T.flatten()  # [2B]
        if self.reference is not None:
            return model_sequence_logps(self.reference, batch, self.chunk_size)[0]
        with tuners.adapters_disabled(self.model):
            return model_sequence_logps(self.model, batch, self.chunk_size)[0]

    def on_fit_start(self) -> None:
        if self.precompute_ref and self.loss.needs_reference and self.ref_cache is None:
            self.ref_cache = self.compute_reference_cache(self.trainer.datamodule)

    @torch.no_grad()
    def compute_reference_cache(self, datamodule) -> Tensor:
        """Reference log-probs of every row of `datamodule.reference_dataloaders()`. # [num_row_ids, 2]"""
        cache = torch.zeros(datamodule.num_row_ids, 2)
        was_training = self.training
        self.eval()
        with tuners.adapters_disabled(self.model), self.trainer.precision_plugin.forward_context():
            for loader in datamodule.reference_dataloaders():
                for batch in loader:
                    batch = self.transfer_batch_to_device(batch, self.device, 0)
                    sums = model_sequence_logps(self.model, batch, self.chunk_size)[0].float()  # [2B]
                    cache[batch["row_ids"].cpu()] = sums.view(2, -1).T.cpu()
        self.train(was_training)
        return cache

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.ref_cache is not None:
            checkpoint["reference_logps"] = self.ref_cache

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.ref_cache = checkpoint.get("reference_logps", self.ref_cache)

    # ----- steps -----
    def pair_logps(self, batch: dict[str, Tensor]) -> PairLogps:
        """Policy (and reference) sequence log-probs of the B pairs from one forward of 2B sequences."""
        sums, counts = model_sequence_logps(self.model, batch, self.chunk_size)  # [2B], [2B]
        chosen, rejected = sums.chunk(2)
        chosen_tokens, rejected_tokens = counts.chunk(2)
        if not self.loss.needs_reference:
            return PairLogps(chosen, rejected, chosen_tokens, rejected_tokens)
        ref_chosen, ref_rejected = self.reference_logps(batch).chunk(2)
        return PairLogps(chosen, rejected, chosen_tokens, rejected_tokens, ref_chosen, ref_rejected)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logps = self.pair_logps(batch)
        loss, metrics = self.loss(logps)
        num_pairs = logps.chosen.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=num_pairs)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=num_pairs)
        return loss * step_scale(self, batch, num_pairs)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logps = self.pair_logps(batch)
        loss, metrics = self.loss(logps)
        num_pairs = logps.chosen.shape[0]
        self.val_loss.update(loss, weight=num_pairs)
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=num_pairs)
        # Combined losses prefix their parts' metrics; the first part's accuracy stands for the whole.
        accuracy = next((v for k, v in metrics.items() if k.endswith("rewards/accuracy")), None)
        if accuracy is not None:
            self.val_accuracy.update(accuracy, weight=num_pairs)
            self.log("val/accuracy", self.val_accuracy, prog_bar=True, batch_size=num_pairs)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=num_pairs)
