"""token_nll: the frozen-head path (gradient built in forward) equals plain cross-entropy, by hand and by autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_swift.losses.causal_lm import token_logps, token_nll


def _head(weight: torch.Tensor, trainable: bool = False) -> nn.Linear:
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight.data.copy_(weight)
    head.weight.requires_grad_(trainable)
    return head


def test_frozen_head_hand_math():
    head = _head(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)  # logits [1, 0, 0]
    nll = token_nll(hidden, head, torch.tensor([0]))
    e = math.e
    torch.testing.assert_close(nll, torch.tensor([math.log(e + 2) - 1]))
    (3 * nll).sum().backward()  # an upstream weight of 3
    # d nll / d h = (softmax - onehot) @ W = [e/(e+2) - 1, 1/(e+2)]
    torch.testing.assert_close(hidden.grad, 3 * torch.tensor([[e / (e + 2) - 1, 1 / (e + 2)]]))


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_frozen_head_matches_autograd_cross_entropy(chunk_size):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(11, 6, generator=g)
    hidden = torch.randn(7, 6, generator=g)
    targets = torch.randint(0, 11, (7,), generator=g)
    upstream = torch.rand(7, generator=g)  # per-token weights, as DPO's sequence sums give
    ref_h = hidden.clone().requires_grad_()
    ref = F.cross_entropy(ref_h @ weight.T, targets, reduction="none")
    (ref * upstream).sum().backward()
    fused_h = hidden.clone().requires_grad_()
    head = _head(weight)
    fused = token_nll(fused_h, head, targets, chunk_size=chunk_size)
    (fused * upstream).sum().backward()
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(fused_h.grad, ref_h.grad)
    assert head.weight.grad is None
    torch.testing.assert_close(token_logps(hidden, head, targets), -ref.detach())  # no grad: plain path


def test_trainable_head_still_gets_its_gradient():
    g = torch.Generator().manual_seed(1)
    weight, hidden = torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g, requires_grad=True)
    targets = torch.tensor([0, 4, 2])
    head = _head(weight, trainable=True)
    token_nll(hidden, head, targets, chunk_size=2).sum().backward()
    w = weight.clone().requires_grad_()
    F.cross_entropy(hidden.detach() @ w.T, targets, reduction="sum").backward()
    torch.testing.assert_close(head.weight.grad, w.grad)
