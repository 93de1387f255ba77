"""Reward model: a causal LM with a scalar head (`AutoModelForSequenceClassification`, one label),
trained on preference pairs with the Bradley-Terry loss; exports a folder that transformers reloads.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torchmetrics import MeanMetric

from lit_swift import tuners
from lit_swift.losses.functional import bradley_terry_loss, last_positions
from lit_swift.objectives.base import CausalLMObjective
from lit_swift.objectives.dpo import step_scale

HEAD_NAMES = ("score", "classifier")
"""Attribute names of the scalar head across transformers' sequence-classification models."""


class RewardModel(CausalLMObjective):
    """Scores prompt + answer at its last token; loss `-log sigma(r_chosen - r_rejected - margin)`.

    Takes `PreferenceDataModule` batches (chosen rows first, then rejected); a per-pair margin comes
    from its `margin_column`. With LoRA the scalar head trains in full (added to `modules_to_save`),
    and `save_hf` writes the merged model, so `AutoModelForSequenceClassification` loads the folder.

    Args:
        use_margin: subtract the batch's per-pair `margin` inside the sigmoid (Llama 2's margin loss).
        **kwargs: model, tuner, optimizer, scheduler and model options of `CausalLMObjective`.
    """

    def __init__(self, *args: Any, use_margin: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_margin = use_margin
        self.val_loss, self.val_accuracy = MeanMetric(), MeanMetric()

    auto_class = "AutoModelForSequenceClassification"
    task_type = "SEQ_CLS"  # peft trains and saves the score head in full

    def head_config(self) -> dict[str, Any]:
        return {"num_labels": 1, "pad_token_id": self.tokenizer.pad_token_id}

    @property
    def head(self) -> nn.Module:
        lm = tuners.base_model(self.model)
        return getattr(lm, _head_name(lm))

    def scores(self, batch: dict[str, Tensor]) -> Tensor:
        """Scalar reward of every sequence, read at its last token (padded or packed rows). # [S]"""
        hidden = self.hidden_states(batch)  # [R, T, H]
        last = last_positions(batch["segment_ids"], int(batch["num_samples"]))  # [S]
        return self.head(hidden.flatten(0, 1)[last]).squeeze(-1).float()  # [S]

    def loss_and_metrics(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], int]:
        chosen, rejected = self.scores(batch).chunk(2)  # [B], [B]
        margin = batch.get("margin") if self.use_margin else None
        loss, metrics = bradley_terry_loss(chosen, rejected, margin)
        return loss, metrics, chosen.shape[0]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, metrics, num_pairs = self.loss_and_metrics(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=num_pairs)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=num_pairs)
        return loss * step_scale(self, batch, num_pairs)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, metrics, num_pairs = self.loss_and_metrics(batch)
        self.val_loss.update(loss, weight=num_pairs)
        self.val_accuracy.update(metrics["rewards/accuracy"], weight=num_pairs)
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=num_pairs)
        self.log("val/accuracy", self.val_accuracy, prog_bar=True, batch_size=num_pairs)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=num_pairs)

    def save_hf(self, folder: str | Path, config_file: str | Path | None = None) -> Path:
        """Write a folder `AutoModelForSequenceClassification.from_pretrained` loads (LoRA merged in a copy)."""
        if not tuners.is_peft(self.model):
            return super().save_hf(folder, config_file)
        policy = self.model
        self.model = tuners.merge(copy.deepcopy(policy))  # merging in place would end LoRA training
        try:
            return super().save_hf(folder, config_file)
        finally:
            self.model = policy


def _head_name(model: nn.Module) -> str:
    names = [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no scalar head named one of {HEAD_NAMES}")
    return names[0]
