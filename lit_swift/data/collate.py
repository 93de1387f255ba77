"""Collators: encoded samples -> batch dicts of tensors (padded, packed, preference pairs).

Batch convention (every collator; B rows of T tokens; "sample" = one EncodedSample / one sequence):

- `input_ids` [B, T] long, right-padded with the caller's `pad_id`.
- `attention_mask` [B, T] long, 1 on real tokens: padded batches only. Packed batches omit it, because
  transformers builds the block-diagonal causal mask from `position_ids` only when no 2D mask is given.
- `position_ids` [B, T] long: 0..len-1 for every sample, restarting at 0 at each sample inside a packed
  row. Pads continue counting in padded rows (0..T-1 overall) and restart at 0 in packed rows, so the
  pad run forms its own block that no real token can see (it is also later in the row: causal).
- `targets` [B, T] long: next-token targets already shifted per sample, `targets[b, t]` = label of the
  token at t+1 of the same sample; IGNORE_INDEX at each sample's last token, on pads, and where that
  label is IGNORE_INDEX. The loss is `cross_entropy(logits[b, t], targets[b, t])`, with no further shift.
- `segment_ids` [B, T] long: which sample of the batch each position belongs to (0..num_samples-1),
  -1 on pads; per-sample sums are `index_add_` over `segment_ids` (e.g. sequence log-probs for DPO).
  Samples are numbered row-major, except in `collate_preference_packed` (see there).
- `num_samples` long scalar tensor; `num_target_tokens` long scalar tensor (count of targets != IGNORE).
- Packed batches only: `cu_seqlens` [num_samples+1] int32, cumulative sample lengths over the non-pad
  tokens flattened row-major (`input_ids[segment_ids >= 0]`), for flash-attn varlen kernels;
  `max_seqlen` (Python int) the longest sample.

Forward a batch with `model(**model_inputs(batch))`, never by picking keys by hand: see `model_inputs`.
"""

from __future__ import annotations

from itertools import accumulate

import torch

from lit_swift.data.packing import pack_first_fit_decreasing
from lit_swift.types import IGNORE_INDEX, EncodedSample

Row = list[tuple[int, EncodedSample]]  # (segment id, sample) in row order


def collate_padded(samples: list[EncodedSample], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """One sample per row, right-padded to the longest sample (rounded up to `pad_to_multiple_of`)."""
    return _collate_rows([[(i, s)] for i, s in enumerate(samples)], pad_id, pad_to_multiple_of, packed=False)


def collate_packed(
    bins: list[list[EncodedSample]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict:
    """One bin (e.g. from `packing.pack_stream`) per row; rows right-padded to the longest row.

    Samples are numbered row-major: `segment_ids` of bin 0's samples come first, in bin order.
    """
    rows, k = [], 0
    for b in bins:
        rows.append([(k + j, s) for j, s in enumerate(b)])
        k += len(b)
    return _collate_rows(rows, pad_id, pad_to_multiple_of, packed=True)


def collate_preference(
    pairs: list[tuple[EncodedSample, EncodedSample]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict:
    """DPO pairs as a padded batch of 2B rows: [chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}].

    Row (and segment) k < B is chosen_k, row B + k is rejected_k.
    """
    return collate_padded([c for c, _ in pairs] + [r for _, r in pairs], pad_id, pad_to_multiple_of)


def collate_preference_packed(
    pairs: list[tuple[EncodedSample, EncodedSample]], pad_id: int, max_length: int
) -> dict:
    """DPO pairs with all 2B sequences FFD-packed into rows of at most `max_length` tokens.

    Whatever row a sequence lands in, its segment id is k for chosen_k and B + k for rejected_k, so
    `index_add_` over `segment_ids` into 2B slots gives [chosen logps, rejected logps]. `cu_seqlens`
    still follows the flattened row-major layout, which need not be in segment order.
    """
    seqs = [c for c, _ in pairs] + [r for _, r in pairs]
    bins = pack_first_fit_decreasing([len(s) for s in seqs], max_length)
    return _collate_rows([[(i, seqs[i]) for i in b] for b in bins], pad_id, None, packed=True)


def _collate_rows(rows: list[Row], pad_id: int, pad_to_multiple_of: int | None, packed: bool) -> dict:
    row_lengths = [sum(len(s) for _, s in row) for row in rows]
    width = max(row_lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids, pos, tgt, seg = [], [], [], []
    for row, n in zip(rows, row_lengths, strict=True):
        r_ids, r_pos, r_tgt, r_seg = [], [], [], []
        for k, s in row:
            assert len(s.input_ids) == len(s.labels), "labels must align with input_ids"
            r_ids += s.input_ids
            r_pos += range(len(s))
            r_tgt += s.labels[1:] + [IGNORE_INDEX]
            r_seg += [k] * len(s)
        num_pad = width - n
        ids.append(r_ids + [pad_id] * num_pad)
        pos.append(r_pos + list(range(num_pad) if packed else range(n, width)))
        tgt.append(r_tgt + [IGNORE_INDEX] * num_pad)
        seg.append(r_seg + [-1] * num_pad)
    targets = torch.tensor(tgt, dtype=torch.long)  # [B, T]
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long),  # [B, T]
        "position_ids": torch.tensor(pos, dtype=torch.long),  # [B, T]
        "targets": targets,
        "segment_ids": torch.tensor(seg, dtype=torch.long),  # [B, T]
        "num_samples": torch.tensor(sum(len(row) for row in rows)),
        "num_target_tokens": (targets != IGNORE_INDEX).sum(),
    }
    if packed:
        lengths = [len(s) for row in rows for _, s in row]
        batch["cu_seqlens"] = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32)  # [num_samples+1]
        batch["max_seqlen"] = max(lengths)
    else:
        batch["attention_mask"] = (batch["segment_ids"] >= 0).long()  # [B, T]
    return batch


def model_inputs(batch: dict, explicit_mask: bool = False, mask_dtype: torch.dtype = torch.bool) -> dict:
    """The exact kwargs for an HF causal LM forward on `batch`: `model(**model_inputs(batch))`.

    Packed batches rely on transformers (>= 5) building a block-diagonal causal mask from
    `position_ids` (`masking_utils.find_packed_sequence_indices`: a new block starts wherever the
    position does not grow by 1). That happens only when `attention_mask is None` and
    `past_key_values is None`; the latter needs `use_cache=False`, because with the config default
    `use_cache=True` the model creates an empty DynamicCache even in training and silently falls back
    to a plain causal mask across the whole row. The same position_ids path drives sdpa, eager, flex
    and flash_attention_2 (varlen) alike.

    Args:
        batch: a collator's output.
        explicit_mask: pass a 4D mask from `block_diagonal_causal_mask(segment_ids)` instead, for
            sdpa/eager only (flash kernels take no dense mask: keep the default). Costs B*T*T memory.
        mask_dtype: dtype of the explicit mask: bool for sdpa, the model's float dtype for eager.
    """
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if explicit_mask:
        kwargs["attention_mask"] = block_diagonal_causal_mask(batch["segment_ids"], mask_dtype)
    elif "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    return kwargs


def block_diagonal_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """4D mask [B, 1, T, T]: query q sees key k iff k <= q and both belong to the same segment.

    Pads (segment -1) see only earlier pads of their row, so no query row is fully masked (no NaN).
    Bool (True = attend) for sdpa; a floating `dtype` gives the additive form (0 / dtype min) for eager.
    """
    t = segment_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()  # [T, T]
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal  # [B, T, T]
    allowed = allowed[:, None]  # [B, 1, T, T]
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )
