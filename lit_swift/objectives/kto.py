"""KTO on unpaired desirable/undesirable completions (Ethayarajh et al. 2024), `KTOLoss` injected.

A `KTODataModule` batch holds 2B sequences: the B rows, then B mismatched (prompt i+1, completion i)
pairs whose policy/reference log ratio sets the KL reference point z0. One forward covers both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lit_swift import tuners
from lit_swift.losses.kto import KTOLogps, KTOLoss, kto_kl_estimate
from lit_swift.objectives.base import CausalLMObjective
from lit_swift.objectives.dpo import frozen_copy, model_sequence_logps, step_scale


class KTO(CausalLMObjective):
    """Kahneman-Tversky Optimization with the reference from the adapter-disabled policy or a frozen copy.

    Args:
        loss: the KTO loss with `beta` and the desirable/undesirable weights.
        **kwargs: model, tuner, optimizer, scheduler and model options of `CausalLMObjective`.
    """

    def __init__(self, *args: Any, loss: KTOLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss = loss if loss is not None else KTOLoss()
        self.reference: nn.Module | None = None
        self.val_loss = MeanMetric()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        if not self.tuner.is_adapter:
            self.reference = frozen_copy(self.model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # Lightning switches every submodule to train mode
        return self

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor]) -> Tensor:
        """Reference summed log-probs of the batch's 2B sequences. # [2B]"""
        if self.reference is not None:
            return model_sequence_logps(self.reference, batch, self.chunk_size)[0]
        with tuners.adapters_disabled(self.model):
            return model_sequence_logps(self.model, batch, self.chunk_size)[0]

    def kto_logps(self, batch: dict[str, Tensor]) -> KTOLogps:
        policy, _ = model_sequence_logps(self.model, batch, self.chunk_size)  # [2B]
        reference = self.reference_logps(batch)  # [2B]
        policy, policy_kl = policy.chunk(2)
        reference, reference_kl = reference.chunk(2)
        return KTOLogps(policy, reference, policy_kl, reference_kl, batch["desirable"])

    def kl(self, logps: KTOLogps) -> Tensor:
        """z0 from the mismatched pairs of every rank, so all ranks share one reference point."""
        if self.trainer.world_size == 1:
            return kto_kl_estimate(logps.policy_kl, logps.reference_kl)
        gathered = self.all_gather(torch.stack([logps.policy_kl.detach(), logps.reference_kl]))  # [W, 2, B]
        return kto_kl_estimate(gathered[:, 0].flatten(), gathered[:, 1].flatten())

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logps = self.kto_logps(batch)
        loss, metrics = self.loss(logps, kl=self.kl(logps))
        num_rows = logps.policy.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=num_rows)
        self.log_dict({f"train/{k}": v for k, v in _means(metrics).items()}, batch_size=num_rows)
        return loss * step_scale(self, batch, num_rows)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logps = self.kto_logps(batch)
        loss, metrics = self.loss(logps, kl=self.kl(logps))
        num_rows = logps.policy.shape[0]
        self.val_loss.update(loss, weight=num_rows)
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=num_rows)
        self.log_dict({f"val/{k}": v for k, v in _means(metrics).items()}, batch_size=num_rows)


def _means(metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop per-batch sums and counts (the logger averages); keep kl and the per-kind reward means."""
    return {k: v for k, v in metrics.items() if not k.endswith("_sum") and not k.startswith("num_")}
