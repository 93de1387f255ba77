"""Collators: literal expected tensors for padded, packed and preference batches, and model inputs."""

from __future__ import annotations

import torch
from transformers.masking_utils import find_packed_sequence_indices

from lit_swift.data.collate import (
    block_diagonal_causal_mask,
    collate_packed,
    collate_padded,
    collate_preference,
    collate_preference_packed,
    model_inputs,
)
from lit_swift.types import IGNORE_INDEX as X
from lit_swift.types import EncodedSample

A = EncodedSample([11, 12, 13], [X, 12, 13])
B = EncodedSample([21, 22], [21, 22])
C = EncodedSample([31], [X])


def _check(batch: dict, expected: dict) -> None:
    assert set(batch) == set(expected)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert batch[key].dtype == value.dtype, key
            assert torch.equal(batch[key], value), (key, batch[key])
        else:
            assert batch[key] == value, key


def t(rows, dtype=torch.long):
    return torch.tensor(rows, dtype=dtype)


def test_collate_padded():
    _check(
        collate_padded([A, B], pad_id=0),
        {
            "input_ids": t([[11, 12, 13], [21, 22, 0]]),
            "attention_mask": t([[1, 1, 1], [1, 1, 0]]),
            "position_ids": t([[0, 1, 2], [0, 1, 2]]),
            "targets": t([[12, 13, X], [22, X, X]]),
            "segment_ids": t([[0, 0, 0], [1, 1, -1]]),
            "num_samples": t(2),
            "num_target_tokens": t(3),
        },
    )


def test_collate_padded_to_multiple():
    _check(
        collate_padded([A, B], pad_id=2, pad_to_multiple_of=4),
        {
            "input_ids": t([[11, 12, 13, 2], [21, 22, 2, 2]]),
            "attention_mask": t([[1, 1, 1, 0], [1, 1, 0, 0]]),
            "position_ids": t([[0, 1, 2, 3], [0, 1, 2, 3]]),
            "targets": t([[12, 13, X, X], [22, X, X, X]]),
            "segment_ids": t([[0, 0, 0, -1], [1, 1, -1, -1]]),
            "num_samples": t(2),
            "num_target_tokens": t(3),
        },
    )


def test_collate_packed():
    _check(
        collate_packed([[A, B], [C]], pad_id=0),
        {
            "input_ids": t([[11, 12, 13, 21, 22], [31, 0, 0, 0, 0]]),
            "position_ids": t([[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]),
            "targets": t([[12, 13, X, 22, X], [X, X, X, X, X]]),  # 13 never predicts 21
            "segment_ids": t([[0, 0, 0, 1, 1], [2, -1, -1, -1, -1]]),
            "num_samples": t(3),
            "num_target_tokens": t(3),
            "cu_seqlens": t([0, 3, 5, 6], torch.int32),
            "max_seqlen": 3,
        },
    )


def test_collate_preference():
    _check(
        collate_preference([(A, C), (B, A)], pad_id=0),
        {
            "input_ids": t([[11, 12, 13], [21, 22, 0], [31, 0, 0], [11, 12, 13]]),
            "attention_mask": t([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]),
            "position_ids": t([[0, 1, 2]] * 4),
            "targets": t([[12, 13, X], [22, X, X], [X, X, X], [12, 13, X]]),
            "segment_ids": t([[0, 0, 0], [1, 1, -1], [2, -1, -1], [3, 3, 3]]),
            "num_samples": t(4),
            "num_target_tokens": t(5),
        },
    )


def test_collate_preference_packed():
    # sequences [chosen_0=A, chosen_1=B, rejected_0=C, rejected_1=A], lengths [3, 2, 1, 3], FFD into 5:
    # A(0) -> row 0, A(3) -> row 1, B(1) -> row 0, C(2) -> row 1; segment ids keep the pair order
    _check(
        collate_preference_packed([(A, C), (B, A)], pad_id=0, max_length=5),
        {
            "input_ids": t([[11, 12, 13, 21, 22], [11, 12, 13, 31, 0]]),
            "position_ids": t([[0, 1, 2, 0, 1], [0, 1, 2, 0, 0]]),
            "targets": t([[12, 13, X, 22, X], [12, 13, X, X, X]]),
            "segment_ids": t([[0, 0, 0, 1, 1], [3, 3, 3, 2, -1]]),
            "num_samples": t(4),
            "num_target_tokens": t(5),
            "cu_seqlens": t([0, 3, 5, 8, 9], torch.int32),
            "max_seqlen": 3,
        },
    )


def test_block_diagonal_causal_mask():
    mask = block_diagonal_causal_mask(t([[0, 0, 1, -1]]))
    expected = t([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], torch.bool)
    assert mask.shape == (1, 1, 4, 4) and torch.equal(mask[0, 0], expected)
    additive = block_diagonal_causal_mask(t([[0, 0, 1, -1]]), torch.float32)
    neg = torch.finfo(torch.float32).min
    assert torch.equal(additive[0, 0], torch.where(expected, 0.0, neg))


def test_transformers_reads_our_packed_positions_as_our_segments():
    """The packed SDPA path relies on transformers splitting rows where position_ids do not grow by 1."""
    batch = collate_packed([[A, B, C], [B, C, C], [A]], pad_id=0)
    found = find_packed_sequence_indices(batch["position_ids"])  # [B, T]
    seg = batch["segment_ids"]  # [B, T]
    assert torch.equal(found[:, :, None] == found[:, None, :], seg[:, :, None] == seg[:, None, :])


def test_model_inputs():
    packed = collate_packed([[A, B], [C]], pad_id=0)
    kwargs = model_inputs(packed)
    assert set(kwargs) == {"input_ids", "position_ids", "use_cache"} and kwargs["use_cache"] is False
    padded = collate_padded([A, B], pad_id=0)
    kwargs = model_inputs(padded)
    assert set(kwargs) == {"input_ids", "position_ids", "attention_mask", "use_cache"}
    assert kwargs["attention_mask"] is padded["attention_mask"]
    explicit = model_inputs(packed, explicit_mask=True)["attention_mask"]
    assert torch.equal(explicit, block_diagonal_causal_mask(packed["segment_ids"]))
