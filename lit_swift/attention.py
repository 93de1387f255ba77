"""`sdpa_varlen`: SDPA that attends within each packed sample instead of over the whole packed row.

Packed rows (see `data/collate.py`) hold several samples whose `position_ids` restart at 0. With
plain `sdpa`, transformers turns that into one block-diagonal mask over the row, and the CPU kernel
still computes every query-key pair of the row: the cost grows with (sum of lengths)^2 and most of
it is thrown away by the mask. `sdpa_varlen` finds the samples from `position_ids` (once per
forward) and runs causal SDPA on each sample's slice alone, so the cost is the sum of len^2 and no
token can see another sample by construction. Rows with one sample each (padded or unpacked batches)
take the ordinary `sdpa` path with transformers' mask, unchanged.

The per-sample loop is the fastest choice on CPU (Σ len² work, one kernel per sample is cheap there),
but on a GPU it would be hundreds of tiny kernel launches per layer. So a packed row on a CUDA device
runs one varlen kernel over the whole batch instead: flash-attn's `flash_attn_varlen_func` (from
`cu_seqlens`) when flash-attn is installed, else torch's FlexAttention with a block-diagonal causal
`BlockMask` built from the same sample boundaries (compiled; no flash-attn needed). `$LIT_SWIFT_PACKED_ATTENTION`
(`loop`, `flex`, `flash`) overrides the choice, e.g. to compare kernels on one GPU.

It is a registered transformers attention function (`AttentionInterface`), chosen with
`attn_implementation: sdpa_varlen`; nothing is written into the saved model config. Layers with a
sliding window keep the masked `sdpa` path, since a per-sample causal kernel has no window.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

NAME = "sdpa_varlen"
KERNEL_ENV = "LIT_SWIFT_PACKED_ATTENTION"

_cache: tuple[weakref.ref | None, int, int, dict[str, Any]] = (None, -1, -1, {})


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


def _per_forward(position_ids: Tensor, batch_size: int, what: str, build: Callable[[Tensor], Any]) -> Any:
    """`build(position_ids expanded to batch_size rows)`, computed once per forward and `what`: every
    layer gets the same `position_ids` tensor object (an in-place change bumps its version)."""
    global _cache
    ref, version, rows, built = _cache
    if ref is None or ref() is not position_ids or version != position_ids._version or rows != batch_size:
        built = {}
        _cache = (weakref.ref(position_ids), position_ids._version, batch_size, built)
    if what not in built:
        built[what] = build(position_ids.expand(batch_size, -1))
    return built[what]


def _row_segments(position_ids: Tensor, batch_size: int) -> list[list[tuple[int, int]]]:
    """`segments` of `position_ids` ([B, T] or [1, T] broadcast to `batch_size` rows), once per forward."""
    return _per_forward(position_ids, batch_size, "segments", segments)


def sample_ids(position_ids: Tensor) -> Tensor:
    """Per token, the index of its sample within its row (starts where positions do not grow by 1). # [B, T]"""
    starts = torch.ones_like(position_ids, dtype=torch.int32)  # [B, T]
    starts[:, 1:] = (position_ids[:, 1:] != position_ids[:, :-1] + 1).int()
    return starts.cumsum(-1)


def packed_kernel(device: torch.device) -> str:
    """`loop` (per-sample SDPA) on CPU; on CUDA `flash` with flash-attn installed, else `flex`."""
    chosen = os.environ.get(KERNEL_ENV)
    if chosen:
        if chosen not in KERNELS:
            raise ValueError(f"${KERNEL_ENV}={chosen!r}: expected one of {', '.join(KERNELS)}")
        return chosen
    if device.type != "cuda":
        return "loop"
    return "flash" if importlib.util.find_spec("flash_attn") is not None else "flex"


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
    kernel = packed_kernel(query.device)
    if kernel == "flex" and dropout > 0:
        kernel = "loop"  # FlexAttention has no attention dropout
    kwargs = {k: v for k, v in kwargs.items() if k not in ("is_causal", "position_ids")}
    return KERNELS[kernel](module, query, key, value, position_ids, spans, dropout, scaling, **kwargs), None


def _loop(module, query, key, value, position_ids, spans, dropout, scaling, **kwargs) -> Tensor:
    """One causal SDPA per sample. # [B, T, heads, head_dim]"""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

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
    return torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]


def block_mask(position_ids: Tensor, batch_size: int):
    """FlexAttention `BlockMask`: causal within each packed sample, nothing across samples."""
    from torch.nn.attention.flex_attention import create_block_mask

    def build(pos: Tensor):
        ids = sample_ids(pos)  # [B, T]

        def same_sample_causal(b, h, q, kv):
            return (ids[b, q] == ids[b, kv]) & (q >= kv)

        t = pos.shape[-1]
        return create_block_mask(same_sample_causal, pos.shape[0], None, t, t, device=pos.device)

    return _per_forward(position_ids, batch_size, "block_mask", build)


@functools.cache
def _flex_attention(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    # eager FlexAttention materialises the scores (a reference path); compiled it is a fused kernel.
    # Default dynamic handling: the second row length recompiles once with a symbolic length, so
    # batches padded to different lengths do not each compile (nor hit the recompile limit).
    return torch.compile(flex_attention) if compiled else flex_attention


def _flex(module, query, key, value, position_ids, spans, dropout, scaling, **kwargs) -> Tensor:
    """The whole batch in one FlexAttention call over a block-diagonal causal mask. # [B, T, heads, head_dim]"""
    mask = block_mask(position_ids, query.shape[0])
    out = _flex_attention(query.is_cuda)(
        query, key, value, block_mask=mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]
    )  # [B, heads, T, head_dim]
    return out.transpose(1, 2).contiguous()


def cu_seqlens(position_ids: Tensor, batch_size: int) -> tuple[Tensor, int]:
    """Sample boundaries of the flattened batch as flash-attn's int32 `cu_seqlens`, and the longest sample."""

    def build(pos: Tensor) -> tuple[Tensor, int]:
        t = pos.shape[-1]
        starts = torch.ones_like(pos, dtype=torch.bool)  # [B, T]; every row starts a sample
        starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
        begin = starts.flatten().nonzero().flatten()  # [num_samples]
        bounds = torch.cat([begin, begin.new_tensor([pos.shape[0] * t])]).to(torch.int32)
        return bounds, int((bounds[1:] - bounds[:-1]).max())

    return _per_forward(position_ids, batch_size, "cu_seqlens", build)


def _flash(module, query, key, value, position_ids, spans, dropout, scaling, **kwargs) -> Tensor:
    """The whole batch as one flash-attn varlen call (GQA native). # [B, T, heads, head_dim]"""
    from flash_attn import flash_attn_varlen_func

    b, h, t, d = query.shape
    bounds, longest = cu_seqlens(position_ids, b)

    def flat(x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(b * t, x.shape[1], d)  # [B*T, heads, head_dim]

    out = flash_attn_varlen_func(
        flat(query), flat(key), flat(value), bounds, bounds, longest, longest,
        dropout_p=dropout, softmax_scale=scaling, causal=True,
    )  # fmt: skip
    return out.view(b, t, h, d)


KERNELS: dict[str, Callable[..., Tensor]] = {"loop": _loop, "flex": _flex, "flash": _flash}
"""How a batch of packed rows attends: per-sample SDPA, one FlexAttention call, one flash-attn varlen call."""


def register() -> None:
    """Make `attn_implementation="sdpa_varlen"` known to transformers (idempotent).

    The mask function is `sdpa`'s, so padded batches get exactly the mask plain `sdpa` would use.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_varlen_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
