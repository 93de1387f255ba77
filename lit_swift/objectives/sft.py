"""Supervised fine-tuning and continued pre-training: next-token loss on the labelled tokens.

The loss is a token-weighted mean over the whole optimizer step: each micro-batch contributes its
summed NLL divided by the number of target tokens in the entire step (all accumulation
micro-batches on all ranks), which the DataModule supplies as `step_target_tokens`. The same data
therefore gives the same gradient as one batch, as accumulation micro-batches or across DDP ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lit_swift import tuners
from lit_swift.losses.causal_lm import token_nll
from lit_swift.objectives.base import CausalLMObjective


class SFT(CausalLMObjective):
    """Causal-LM objective for SFT (chat data, labels on assistant turns) and CPT (plain text).

    Args:
        neftune_alpha: NEFTune embedding-noise scale (Jain et al. 2023); None disables it.
        recompute_logits: recompute LM-head chunks in backward (lower memory, a little slower).
        **kwargs: model, tuner, optimizer, scheduler and model options of `CausalLMObjective`.
    """

    def __init__(
        self, *args: Any, neftune_alpha: float | None = None, recompute_logits: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.neftune_alpha, self.recompute_logits = neftune_alpha, recompute_logits
        self.val_loss = MeanMetric()

    def configure_model(self) -> None:
        if self.model is None:
            super().configure_model()
            if self.neftune_alpha:
                tuners.add_neftune(self.model, self.neftune_alpha)

    def nll_sum(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Summed NLL over the batch's target tokens and their count."""
        hidden, targets, _ = self.target_hidden(batch)  # [N, H], [N]
        nll = token_nll(hidden, self.lm_head, targets, self.chunk_size, self.recompute_logits)  # [N]
        return nll.sum(), torch.tensor(targets.numel(), device=nll.device)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss_sum, num_tokens = self.nll_sum(batch)
        if "step_target_tokens" in batch:
            # Lightning divides by the accumulation steps and DDP averages over ranks; undo both so the
            # optimizer sees sum(NLL over the step) / tokens(step).
            scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
            loss = loss_sum * scale / batch["step_target_tokens"]
        else:
            loss = loss_sum / num_tokens.clamp(min=1)
        self.log("train/loss", loss_sum / num_tokens.clamp(min=1), prog_bar=True, batch_size=1)
        self.log("train/tokens", num_tokens.float(), reduce_fx="sum", batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss_sum, num_tokens = self.nll_sum(batch)
        self.val_loss.update(loss_sum / num_tokens.clamp(min=1), weight=num_tokens)
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=1)
