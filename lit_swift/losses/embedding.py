"""Embedding and reranker losses: pure tensor math returning `(loss, metrics)`.

Embedding losses take query and document embeddings (any norm; they compare cosine similarities) plus,
per query, the index of its positive among the documents; reranker losses take `[B, G]` group scores.
"""

from __future__ import annotations

import abc
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


class EmbeddingLoss(abc.ABC):
    """Base class: `loss(query, docs, targets, scores)` returns the scalar loss and detached metrics.

    `query` is `[B, D]`, `docs` is `[N, D]` (positives first, then any hard negatives, possibly
    gathered from every rank), `targets[i]` is the row of `docs` holding query i's positive, and
    `scores` is an optional `[B]` gold similarity for scored pairs.
    """

    @abc.abstractmethod
    def __call__(
        self, query: Tensor, docs: Tensor, targets: Tensor, scores: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


class InfoNCE(EmbeddingLoss):
    """Contrastive InfoNCE (van den Oord et al. 2018) with in-batch and hard negatives.

    Cross-entropy over `cos(q_i, d_j) / temperature` for all documents j, the positive being the target
    (the "multiple negatives ranking" form used by SimCSE/E5/GTE).

    Args:
        temperature: softmax temperature tau; small values (0.01-0.05) sharpen the distribution.
    """

    def __init__(self, temperature: float = 0.05):
        self.temperature = temperature

    def __call__(self, query, docs, targets, scores=None):
        sim = F.normalize(query, dim=-1) @ F.normalize(docs, dim=-1).T  # [B, N]
        loss = F.cross_entropy(sim / self.temperature, targets)
        with torch.no_grad():
            pos = sim.gather(1, targets[:, None]).squeeze(1)  # [B]
            accuracy = (sim.argmax(-1) == targets).float().mean()
        return loss, {"accuracy": accuracy, "sim/positive": pos.mean(), "sim/mean": sim.mean()}


class CosineRegression(EmbeddingLoss):
    """Fit `cos(q_i, positive_i)` to the gold `scores` of scored pairs (STS-style data).

    `cosent` (Su 2022, CoSENT): `log(1 + sum_{s_i > s_j} exp(scale * (cos_j - cos_i)))`, which only asks
    the cosine to order the pairs like the scores, so scores on any scale work. `mse`: mean squared error
    between the cosine and the score, so scores must lie in [-1, 1] (e.g. 0..1 labels).

    Args:
        mode: `cosent` (rank-based, default) or `mse` (regress the cosine onto the score).
        scale: CoSENT's lambda (inverse temperature); unused by `mse`.
    """

    def __init__(self, mode: Literal["cosent", "mse"] = "cosent", scale: float = 20.0):
        self.mode, self.scale = mode, scale

    def __call__(self, query, docs, targets, scores=None):
        if scores is None:
            raise ValueError("CosineRegression needs a 'score' (or 'label') column on every row")
        cos = F.cosine_similarity(query, docs[targets], dim=-1)  # [B]
        scores = scores.to(cos.dtype)
        if self.mode == "mse":
            loss = F.mse_loss(cos, scores)
        else:
            diff = self.scale * (cos[None, :] - cos[:, None])  # [B, B]: scale * (cos_j - cos_i)
            diff = diff.masked_fill(~(scores[:, None] > scores[None, :]), float("-inf"))
            zero = diff.new_zeros(1)  # the `1 +` inside the log
            loss = torch.logsumexp(torch.cat([zero, diff.flatten()]), dim=0)
        return loss, {"sim/positive": cos.detach().mean()}


class Matryoshka(EmbeddingLoss):
    """Matryoshka representation learning (Kusupati et al. 2022): the inner loss on embedding prefixes.

    Each prefix `[..., :d]` is re-normalised by the inner loss (it compares cosines), so every
    truncated embedding is trained to work on its own.

    Args:
        loss: the loss applied at every dimension, e.g. `InfoNCE`.
        dims: prefix sizes, e.g. `[384, 256, 128, 64]`; each must not exceed the model's width.
        weights: per-dimension weights (default all 1); the loss is their weighted mean.
    """

    def __init__(self, loss: EmbeddingLoss, dims: list[int], weights: list[float] | None = None):
        if weights is not None and len(weights) != len(dims):
            raise ValueError(f"Matryoshka: {len(weights)} weights for {len(dims)} dims")
        self.loss, self.dims, self.weights = loss, dims, weights or [1.0] * len(dims)

    def __call__(self, query, docs, targets, scores=None):
        width = query.shape[-1]
        if max(self.dims) > width:
            raise ValueError(f"Matryoshka dims {self.dims} exceed the embedding width {width}")
        total, metrics = query.new_zeros(()), {}
        for dim, weight in zip(self.dims, self.weights, strict=True):
            loss, inner = self.loss(query[:, :dim], docs[:, :dim], targets, scores)  # [B, d], [N, d]
            total = total + weight * loss
            metrics[f"loss@{dim}"] = loss.detach()
            metrics.update({f"{k}@{dim}": v for k, v in inner.items()})
        return total / sum(self.weights), metrics


class RerankLoss(abc.ABC):
    """Base class: `loss(scores, labels)` on `[B, G]` groups of (query, document) logits and labels."""

    @abc.abstractmethod
    def __call__(self, scores: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]: ...


class PointwiseBCE(RerankLoss):
    """Binary cross-entropy on every (query, document) logit independently (labels in [0, 1])."""

    def __call__(self, scores, labels):
        loss = F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype))
        with torch.no_grad():
            accuracy = ((scores > 0) == (labels > 0.5)).float().mean()
        return loss, {"accuracy": accuracy}


class ListwiseSoftmax(RerankLoss):
    """Listwise softmax cross-entropy over each group of one positive and k negatives (Cao et al. 2007).

    The target distribution is the labels normalised per group (one-hot for 1 positive + k negatives).

    Args:
        temperature: divides the logits before the softmax.
    """

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def __call__(self, scores, labels):
        if scores.shape[-1] < 2:
            raise ValueError("ListwiseSoftmax needs groups of at least 2 documents (set num_negatives >= 1)")
        target = labels.to(scores.dtype)  # [B, G]
        target = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
        logp = F.log_softmax(scores / self.temperature, dim=-1)  # [B, G]
        loss = -(target * logp).sum(-1).mean()
        with torch.no_grad():
            accuracy = (scores.argmax(-1) == labels.argmax(-1)).float().mean()
        return loss, {"accuracy": accuracy}
