"""Sequence sums, masked means, last positions and the Bradley-Terry loss on literal tensors."""

from __future__ import annotations

import math

import torch

from lit_swift.losses.functional import (
    bradley_terry_loss,
    last_positions,
    masked_mean,
    sequence_logps,
    sequence_sums,
)


def test_sequence_sums_and_counts():
    """Values -1, -2, -3, -4, -5 with segments 1, 0, 1, 3, 0 over 4 segments.

    sums: seg0 = -2 + -5 = -7, seg1 = -1 + -3 = -4, seg2 = 0 (no value), seg3 = -4; counts 2, 2, 0, 1.
    """
    logps = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0])
    segments = torch.tensor([1, 0, 1, 3, 0])
    assert torch.equal(sequence_sums(logps, segments, 4), torch.tensor([-7.0, -4.0, 0.0, -4.0]))
    sums, counts = sequence_logps(logps, segments, 4)
    assert torch.equal(sums, torch.tensor([-7.0, -4.0, 0.0, -4.0]))
    assert torch.equal(counts, torch.tensor([2.0, 2.0, 0.0, 1.0]))


def test_sequence_sums_gradient_flows_per_token():
    logps = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    out = sequence_sums(logps, torch.tensor([0, 1, 0]), 2)
    (out * torch.tensor([10.0, 100.0])).sum().backward()
    assert torch.equal(logps.grad, torch.tensor([10.0, 100.0, 10.0]))


def test_masked_mean():
    """Row 0 keeps 1 and 3 (mean 2), row 1 keeps nothing (0); overall mean of 1, 3, 6 is 10/3."""
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    assert torch.equal(masked_mean(values, mask, dim=1), torch.tensor([2.0, 0.0]))
    mask[1, 2] = True
    assert math.isclose(masked_mean(values, mask).item(), 10 / 3, rel_tol=1e-6)


def test_last_positions_padded_and_packed():
    """Row 0 holds segment 0 (positions 0-1) and segment 2 (2-3); row 1 holds segment 1 (4-6) and a pad.

    Flat last positions: seg0 -> 1, seg1 -> 6, seg2 -> 3.
    """
    segments = torch.tensor([[0, 0, 2, 2], [1, 1, 1, -1]])
    assert torch.equal(last_positions(segments, 3), torch.tensor([1, 6, 3]))


def test_bradley_terry_loss_hand_math():
    """r_c = [2, 0], r_r = [1, 1]: diffs 1 and -1; loss = (log(1+e^-1) + log(1+e^1)) / 2 = 0.81326.

    With margin [1, 0]: diffs minus margin are 0 and -1: (log 2 + log(1+e)) / 2 = 1.00329. Accuracy 0.5.
    """
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, metrics = bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert metrics["rewards/accuracy"].item() == 0.5 and metrics["rewards/margin"].item() == 0.0
    loss, _ = bradley_terry_loss(chosen, rejected, torch.tensor([1.0, 0.0]))
    assert math.isclose(loss.item(), (math.log(2) + math.log1p(math.e)) / 2, rel_tol=1e-6)
