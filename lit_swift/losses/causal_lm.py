"""Next-token cross-entropy computed only where targets exist, in chunks of the LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _chunk_nll(hidden: Tensor, head: nn.Module, targets: Tensor) -> Tensor:
    logits = head(hidden).float()  # [n, V]
    return F.cross_entropy(logits, targets, reduction="none")  # [n]


def token_nll(
    hidden: Tensor, head: nn.Module, targets: Tensor, chunk_size: int = 2048, recompute: bool = False
) -> Tensor:
    """Per-token negative log-likelihood without full-vocabulary logits for ignored positions.

    Args:
        hidden: final hidden states at target positions only. # [N, H]
        head: the LM head (vocabulary projection).
        targets: token ids to predict at those positions. # [N]
        chunk_size: rows of logits materialised at once.
        recompute: recompute each chunk's logits in backward instead of keeping them (less memory).

    Returns:
        the NLL of each target. # [N]
    """
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if recompute and torch.is_grad_enabled():
            pieces.append(checkpoint(_chunk_nll, h, head, t, use_reentrant=False))
        else:
            pieces.append(_chunk_nll(h, head, t))
    return torch.cat(pieces) if pieces else hidden.new_zeros(0)


def token_logps(
    hidden: Tensor, head: nn.Module, targets: Tensor, chunk_size: int = 2048, recompute: bool = False
) -> Tensor:
    """Per-token log-probabilities of `targets` (the negative of `token_nll`). # [N]"""
    return -token_nll(hidden, head, targets, chunk_size, recompute)
