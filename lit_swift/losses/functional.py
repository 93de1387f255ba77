"""Pure tensor helpers shared by the sequence-level objectives: per-sequence sums over `segment_ids`,
masked means, the last position of each sequence, and the Bradley-Terry reward-model loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sequence_sums(values: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """Sum `values` per segment: `out[k] = sum(values[segment_ids == k])`.

    Args:
        values: one value per position (e.g. token log-probs at target positions). # [N]
        segment_ids: which sequence each value belongs to, in `0..num_segments-1`. # [N]
        num_segments: number of sequences (segments without values sum to 0).

    Returns:
        per-sequence sums in the dtype of `values`. # [num_segments]
    """
    out = values.new_zeros(num_segments)  # [S]
    return out.index_add(0, segment_ids, values)


def sequence_logps(token_logps: Tensor, segment_ids: Tensor, num_segments: int) -> tuple[Tensor, Tensor]:
    """Summed log-probs of each sequence's target tokens, and how many target tokens each has.

    Args:
        token_logps: log-probs at target positions only. # [N]
        segment_ids: sequence of each of those positions. # [N]
        num_segments: number of sequences in the batch.

    Returns:
        `(sums, counts)`, both float. # [S], [S]
    """
    sums = sequence_sums(token_logps, segment_ids, num_segments)  # [S]
    counts = sequence_sums(torch.ones_like(token_logps), segment_ids, num_segments)  # [S]
    return sums, counts


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` where `mask` is true (over `dim`, or everything); 0 where nothing is selected."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def last_positions(segment_ids: Tensor, num_segments: int) -> Tensor:
    """Flat index (into `segment_ids.flatten()`) of the last token of every segment; pads (-1) ignored.

    Args:
        segment_ids: sequence id per position, -1 on pads (padded or packed rows). # [R, T]
        num_segments: number of sequences; every one must occur.

    Returns:
        indices into the flattened `[R*T]` positions. # [num_segments]
    """
    flat = segment_ids.flatten()  # [R*T]
    real = flat >= 0
    positions = torch.arange(flat.numel(), device=flat.device)[real]  # [N]
    last = torch.full((num_segments,), -1, dtype=torch.long, device=flat.device)  # [S]
    last = last.scatter_reduce(0, flat[real], positions, reduce="amax")
    assert bool((last >= 0).all()), "every segment must have at least one token"
    return last


def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Reward-model loss `mean(-log sigma(r_c - r_r - m))` (Bradley & Terry 1952; Llama 2's margin m).

    Args:
        chosen: scalar reward of each chosen answer. # [B]
        rejected: scalar reward of each rejected answer. # [B]
        margin: optional per-pair margin the chosen reward must exceed the rejected one by. # [B]

    Returns:
        the scalar loss and detached metrics (`accuracy` is the fraction with `r_c > r_r`).
    """
    diff = chosen - rejected  # [B]
    losses = -F.logsigmoid(diff if margin is None else diff - margin)  # [B]
    metrics = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margin": diff.mean(),
        "rewards/accuracy": (diff > 0).float().mean(),
    }
    return losses.mean(), {k: v.detach() for k, v in metrics.items()}
