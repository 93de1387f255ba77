"""`sdpa_varlen`: SDPA that attends within each packed sample instead of over the whole packed row.

Packed rows (see `data/collate.py`) hold several samples whose `position_ids` restart at 0. With
plain `sdpa`, transformers turns that into one block-diagonal mask over the row, and the CPU kernel
still computes every query-key pair of the row: the cost grows with (sum of lengths)^2 and most of
it is thrown away by the mask. `sdpa_varlen` finds the samples from `position_ids` (once per
forward) and runs causal SDPA on each sample's slice alone, so the cost is the sum of len^2 and no
token can see another sample by construction. Rows with one sample each (padded or unpacked batches)
take the ordinary `sdpa` path with transformers' mask, unchanged.

It is a registered transformers attention function (`AttentionInterface`), chosen with
`attn_implementation: sdpa_varlen`; nothing is written into the saved model config. Layers with a
sliding window keep the masked `sdpa` path, since a per-sample causal kernel has no window.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

NAME = "sdpa_varlen"

_cache: tuple[weakref.ref | None, int, list[list[tuple[int, int]]] | None] = (None, -1, None)


def segments(position_ids: Tensor) -> list[list[tuple[int, int]]]:
    """Per row, the `[start, end)` spans where positions grow by exactly 1 (one span per sample).

    The same rule as transformers' `find_packed_sequence_indices`: a new sample starts wherever the
    position does not follow the previous one. A packed row's trailing pad run (positions 0..k)
    is a span of its own, so no real token sees it.
    """
    t = position_ids.shape[-1]
    starts = torch.ones_like(position_ids, dtype=torch.bool)  # [B, T]
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    out = []
    for row in starts.cpu().tolist():
        begin = [i for i, s in enumerate(row) if s]
        out.append(list(zip(begin, [*begin[1:], t], strict=True)))
    return out


def _row_segments(position_ids: Tensor, batch_size: int) -> list[list[tuple[int, int]]]:
    """`segments` of `position_ids` ([B, T] or [1, T] broadcast to `batch_size` rows), computed once
    per forward: every layer gets the same tensor object (an in-place change bumps its version)."""
    global _cache
    ref, version, spans = _cache
    if (
        ref is None
        or ref() is not position_ids
        or version != position_ids._version
        or len(spans) != batch_size
    ):
        spans = segments(position_ids.expand(batch_size, -1))
        _cache = (weakref.ref(position_ids), position_ids._version, spans)
    return spans


def sdpa_varlen_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers attention-function signature; query/key/value are [B, heads, T, head_dim].

    Returns the attention output as [B, T, heads, head_dim], like transformers' `sdpa`.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    packed = (
        position_ids is not None
        and position_ids.dim() == 2
        and query.shape[2] == key.shape[2] == position_ids.shape[-1]
        and getattr(module, "is_causal", True)
        and getattr(module, "sliding_window", None) is None
    )
    spans = _row_segments(position_ids, query.shape[0]) if packed else None
    if spans is None or all(len(row) == 1 for row in spans):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    kwargs.pop("is_causal", None)
    rows = []
    for b, row in enumerate(spans):
        pieces = [
            sdpa_attention_forward(
                module,
                query[b : b + 1, :, s:e],
                key[b : b + 1, :, s:e],
                value[b : b + 1, :, s:e],
                None,
                dropout,
                scaling,
                is_causal=True,
                **kwargs,
            )[0]  # [1, len, heads, head_dim]
            for s, e in row
        ]
        rows.append(torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
    return torch.cat(rows, dim=0) if len(rows) > 1 else rows[0], None


def register() -> None:
    """Make `attn_implementation="sdpa_varlen"` known to transformers (idempotent).

    The mask function is `sdpa`'s, so padded batches get exactly the mask plain `sdpa` would use.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_varlen_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
