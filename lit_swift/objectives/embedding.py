"""Bi-encoder embedding objective: pooled, L2-normalised text embeddings trained with an injected loss.

Works for encoders (BERT-style, `mean`/`cls` pooling) and decoder LMs (`last` pooling). Validation ranks
the validation corpus for every validation query and logs recall@k, MRR and nDCG@k.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

from lit_swift import models, tuners
from lit_swift.losses.embedding import EmbeddingLoss, InfoNCE
from lit_swift.objectives.base import CausalLMObjective, write_folder
from lit_swift.optim import Schedule

Pooling = Literal["mean", "cls", "last"]


def pool(hidden: Tensor, mask: Tensor, pooling: Pooling) -> Tensor:
    """One vector per sequence from hidden states `[B, T, H]` and the attention mask `[B, T]`.

    `mean` averages attended positions; `cls` takes the first attended position; `last` the last attended
    one (the EOS/last token of a decoder), correct for left and right padding alike.
    """
    mask = mask.to(hidden.dtype)  # [B, T]
    if pooling == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # [B, H]
    positions = torch.arange(mask.shape[1], device=mask.device, dtype=mask.dtype)  # [T]
    index = mask.argmax(-1) if pooling == "cls" else (mask * positions).argmax(-1)  # [B]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]  # [B, H]


def merged_copy(model: torch.nn.Module, tuner: tuners.Tuner) -> torch.nn.Module:
    """The plain transformers model with adapters folded in, leaving the training model untouched."""
    return tuners.merge(copy.deepcopy(model)) if tuner.is_adapter else tuners.base_model(model)


def retrieval_metrics(sim: Tensor, relevant: Tensor, recall_at: list[int], ndcg_at: int) -> dict[str, Tensor]:
    """recall@k, MRR and nDCG@k of scores `[Q, M]` against boolean relevance `[Q, M]`."""
    indexes = torch.arange(sim.shape[0])[:, None].expand_as(sim).flatten()  # [Q*M]
    metrics = {f"recall@{k}": RetrievalRecall(top_k=k) for k in recall_at}
    metrics |= {"mrr": RetrievalMRR(), f"ndcg@{ndcg_at}": RetrievalNormalizedDCG(top_k=ndcg_at)}
    preds, target = sim.float().flatten().cpu(), relevant.flatten().cpu()
    return {name: m(preds, target, indexes=indexes) for name, m in metrics.items()}


class Embedding(CausalLMObjective):
    """Bi-encoder: `embed(text) = normalize(pool(model(text)))`, trained by `loss` on (query, document) pairs.

    Args:
        model: encoder or decoder spec: alias (`all-minilm-l6-v2`, `smollm2-135m-instruct`), folder or hub id.
        loss: `lit_swift.losses.embedding.InfoNCE` (default), `CosineRegression` or `Matryoshka`.
        pooling: `mean` (sentence-transformers encoders), `cls`, or `last` (decoder LMs).
        normalize: L2-normalise the exported/evaluated embeddings (the losses compare cosines anyway).
        gather_across_ranks: use every rank's documents as negatives (gradients flow back to each rank).
        recall_at: the k of the logged validation recall@k.
        ndcg_at: the k of the logged validation nDCG@k.
        tuner: which weights train; default `Full` (a plain `LoRA` gets the FEATURE_EXTRACTION task type).
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
        loss: EmbeddingLoss | None = None,
        pooling: Pooling = "mean",
        normalize: bool = True,
        gather_across_ranks: bool = True,
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
        self.loss = loss if loss is not None else InfoNCE()
        self.pooling, self.normalize, self.gather_across_ranks = pooling, normalize, gather_across_ranks
        self.recall_at, self.ndcg_at = recall_at or [1, 5], ndcg_at
        self._val: dict[str, Any] = {}

    auto_class = "AutoModel"
    task_type = "FEATURE_EXTRACTION"

    def configure_model(self) -> None:
        super().configure_model()
        # BERT-style AutoModels carry a pooler that `embed` never runs through to the loss (it pools
        # `last_hidden_state`): trainable yet gradient-free, it stops DDP's reducer at step 2
        # (find_unused_parameters is off). It never updated anyway, so freeze it.
        pooler = getattr(tuners.base_model(self.model), "pooler", None)
        if isinstance(pooler, torch.nn.Module):
            pooler.requires_grad_(False)

    def embed(self, batch: dict[str, Any], prefix: str) -> Tensor:
        """Pooled embeddings of the `prefix_*` tokens of a batch. # [B, H]"""
        inputs = {k[len(prefix) + 1 :]: v for k, v in batch.items() if k.startswith(prefix + "_")}
        inputs.pop("ids", None)  # `doc_ids` are corpus ids, not tokens
        hidden = tuners.base_model(self.model)(**inputs).last_hidden_state  # [B, T, H]
        vectors = pool(hidden, inputs["attention_mask"], self.pooling)  # [B, H]
        return F.normalize(vectors, dim=-1) if self.normalize else vectors

    def gather_docs(self, docs: Tensor) -> tuple[Tensor, int]:
        """Every rank's documents `[sum N_r, H]` (gradients flow back) and this rank's offset in them."""
        if self.trainer.world_size == 1 or not self.gather_across_ranks:
            return docs, 0
        sizes = self.all_gather(torch.tensor(docs.shape[0], device=docs.device)).tolist()  # [W]
        padded = F.pad(docs, (0, 0, 0, max(sizes) - docs.shape[0]))  # [N_max, H]: ragged last batches
        gathered = self.all_gather(padded, sync_grads=True).flatten(0, 1)  # [W*N_max, H]
        keep = torch.cat([torch.arange(n) + r * max(sizes) for r, n in enumerate(sizes)]).to(docs.device)
        return gathered[keep], sum(sizes[: self.trainer.global_rank])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        query, docs = self.embed(batch, "query"), self.embed(batch, "doc")  # [B, H], [B*(1+k), H]
        docs, offset = self.gather_docs(docs)
        targets = torch.arange(query.shape[0], device=query.device) + offset  # [B]
        # Each rank's loss covers its own queries; DDP's mean of the gradients is the gradient of the mean.
        loss, metrics = self.loss(query, docs, targets, batch.get("scores"))
        batch_size = query.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=batch_size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        query, docs = self.embed(batch, "query"), self.embed(batch, "doc")  # [B, H], [B*(1+k), H]
        targets = torch.arange(query.shape[0], device=query.device)
        loss, _ = self.loss(query, docs, targets, batch.get("scores"))
        self.log("val/loss", loss, prog_bar=True, batch_size=query.shape[0])
        self._val.setdefault("queries", []).append(query.float().cpu())
        self._val.setdefault("positives", []).extend(batch["doc_ids"][: query.shape[0]])
        corpus = self._val.setdefault("corpus", {})
        corpus.update(zip(batch["doc_ids"], docs.float().cpu(), strict=True))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        ids = sorted(self._val["corpus"])
        corpus = F.normalize(torch.stack([self._val["corpus"][i] for i in ids]), dim=-1)  # [M, H]
        queries = F.normalize(torch.cat(self._val["queries"]), dim=-1)  # [Q, H]
        column = {doc_id: j for j, doc_id in enumerate(ids)}
        relevant = torch.zeros(len(queries), len(ids), dtype=torch.bool)  # [Q, M]
        relevant[torch.arange(len(queries)), [column[p] for p in self._val["positives"]]] = True
        metrics = retrieval_metrics(queries @ corpus.T, relevant, self.recall_at, self.ndcg_at)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, prog_bar=True, rank_zero_only=True)
        self._val = {}

    def save_hf(self, folder: str | Path, config_file: str | Path | None = None) -> Path:
        """Merged transformers weights + tokenizer + sentence-transformers module files (AutoModel and
        `SentenceTransformer(folder)` both load it)."""

        def write(tmp: Path) -> None:
            merged_copy(self.model, self.tuner).save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
            self.write_export_files(tmp)

        return write_folder(folder, write, config_file)

    def write_export_files(self, folder: Path) -> None:
        """The sentence-transformers files (modules, pooling, normalisation, sequence length) of this model.

        `max_seq_length` is the base model's (its own `sentence_bert_config.json`, else the tokenizer's
        and position table's limit), not the training `max_length`: users of the export get the
        model's full input length, as from the base.
        """
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
            (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        config = tuners.base_model(self.model).config
        pooling = {
            "word_embedding_dimension": config.hidden_size,
            "pooling_mode_cls_token": self.pooling == "cls",
            "pooling_mode_mean_tokens": self.pooling == "mean",
            "pooling_mode_lasttoken": self.pooling == "last",
        }
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
        (folder / "sentence_bert_config.json").write_text(json.dumps(self.base_st_config(config), indent=2))

    def base_st_config(self, config: Any) -> dict[str, Any]:
        """The base model's sentence-transformers settings (`max_seq_length`, `do_lower_case`)."""
        base = Path(models.resolve(self.model_spec)) / "sentence_bert_config.json"
        if base.exists():
            return json.loads(base.read_text())
        limits = [
            getattr(config, "max_position_embeddings", None),
            getattr(self.tokenizer, "model_max_length", None),
        ]
        return {"max_seq_length": min(n for n in limits if n) if any(limits) else 512, "do_lower_case": False}
