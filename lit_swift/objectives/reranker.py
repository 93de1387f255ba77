"""Cross-encoder reranker objective: (query, document) -> one relevance logit, trained pointwise or listwise.

The model is `AutoModelForSequenceClassification` with `num_labels=1`; validation reranks each query's
group (its positive and hard negatives) and logs recall@k, MRR and nDCG@k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from lit_swift import models, tuners
from lit_swift.losses.embedding import ListwiseSoftmax, RerankLoss
from lit_swift.objectives.base import CausalLMObjective, write_folder
from lit_swift.objectives.embedding import merged_copy, retrieval_metrics
from lit_swift.optim import Schedule


class Reranker(CausalLMObjective):
    """Cross-encoder scoring each (query, document) pair with a scalar logit.

    Args:
        model: encoder or decoder spec: alias (`all-minilm-l6-v2`), folder or hub id; a new 1-logit head
            is added when the checkpoint has none.
        loss: `lit_swift.losses.embedding.ListwiseSoftmax` (default: 1 positive vs k negatives) or
            `PointwiseBCE` (each pair on its own).
        recall_at: the k of the logged validation recall@k.
        ndcg_at: the k of the logged validation nDCG@k.
        tuner: which weights train; default `Full` (a plain `LoRA` gets the SEQ_CLS task type, so the
            head trains in full).
        optimizer: optimizer class and arguments, e.g. `torch.optim.AdamW` with `lr`.
        scheduler: learning-rate schedule over the run's optimizer steps.
        dtype: weight dtype.
        attn_implementation: transformers attention backend.
        gradient_checkpointing: recompute activations in backward to save memory.
        config_overrides: model config fields to override, e.g. `{num_hidden_layers: 2}`.
    """

    def __init__(
        self,
        model: str,
        loss: RerankLoss | None = None,
        recall_at: list[int] | None = None,
        ndcg_at: int = 10,
        tuner: tuners.Tuner | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: Schedule | None = None,
        dtype: models.Dtype = "float32",
        attn_implementation: models.AttnImplementation = "sdpa",
        gradient_checkpointing: bool = False,
        config_overrides: dict[str, Any] | None = None,
    ):
        super().__init__(
            model, tuner if tuner is not None else tuners.Full(), optimizer, scheduler, dtype,
            attn_implementation, gradient_checkpointing, config_overrides,
        )  # fmt: skip
        self.loss = loss if loss is not None else ListwiseSoftmax()
        self.recall_at, self.ndcg_at = recall_at or [1], ndcg_at
        self._val: dict[str, list[Tensor]] = {}

    auto_class = "AutoModelForSequenceClassification"
    task_type = "SEQ_CLS"

    def head_config(self) -> dict[str, Any]:
        # decoder heads pick each row's last non-pad token, so the config needs the pad id
        return {"num_labels": 1, "pad_token_id": self.tokenizer.pad_token_id}

    def score(self, batch: dict[str, Any]) -> Tensor:
        """Relevance logits per group. # [B, G]"""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = tuners.base_model(self.model)(**inputs).logits  # [B*G, 1]
        return logits.view(batch["labels"].shape)  # [B, G]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, metrics = self.loss(self.score(batch), batch["labels"])
        batch_size = batch["labels"].shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        scores = self.score(batch)  # [B, G]
        loss, _ = self.loss(scores, batch["labels"])
        self.log("val/loss", loss, prog_bar=True, batch_size=scores.shape[0])
        self._val.setdefault("scores", []).append(scores.float().cpu())
        self._val.setdefault("labels", []).append(batch["labels"].cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        scores, labels = torch.cat(self._val["scores"]), torch.cat(self._val["labels"])  # [Q, G]
        metrics = retrieval_metrics(scores, labels > 0.5, self.recall_at, self.ndcg_at)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True, rank_zero_only=True)
        self._val = {}

    def save_hf(self, folder: str | Path, config_file: str | Path | None = None) -> Path:
        """A sequence-classification folder (merged weights + tokenizer) for AutoModelForSequenceClassification."""

        def write(tmp: Path) -> None:
            merged_copy(self.model, self.tuner).save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))

        return write_folder(folder, write, config_file)
