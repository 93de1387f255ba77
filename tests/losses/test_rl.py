"""GRPO-family losses and advantages against hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from lit_swift.losses.rl import (
    CISPOLoss,
    DAPOLoss,
    DrGRPOAdvantage,
    DrGRPOLoss,
    GRPOAdvantage,
    GRPOLoss,
    GSPOLoss,
    PolicyBatch,
    ReinforcePlusPlusAdvantage,
    RLOOAdvantage,
    StepSize,
    k3_kl,
    truncated_is_weights,
    zero_spread_groups,
)

LN = math.log


def _batch(ratios, advantages, mask, requires_grad=True, **kw) -> PolicyBatch:
    """old log-probs log(0.5); current = old + log(ratio)."""
    old = torch.full((len(ratios), len(ratios[0])), LN(0.5))
    logps = (old + torch.tensor(ratios).log()).requires_grad_(requires_grad)
    return PolicyBatch(logps, old, torch.tensor(advantages), torch.tensor(mask), **kw)


def test_grpo_sequence_mean_then_mean_at_ratio_one():
    """ratio 1 everywhere: per-token loss = -A. Sequence 0 (A=1, 2 tokens) -> -1; sequence 1 (A=-2, 1
    token) -> 2. GRPO: (-1 + 2) / 2 = 0.5. DAPO (token): (-1 - 1 + 2) / 3 = 0. Dr. GRPO with budget 4:
    (-2 + 2) / (2 * 4) = 0."""
    b = _batch([[1.0, 1.0], [1.0, 1.0]], [1.0, -2.0], [[True, True], [True, False]])
    assert GRPOLoss()(b)[0].item() == pytest.approx(0.5)
    assert DAPOLoss()(b)[0].item() == pytest.approx(0.0, abs=1e-7)
    step = StepSize(num_tokens=3, num_sequences=2, max_completion_length=4)
    assert DrGRPOLoss()(b, step)[0].item() == pytest.approx(0.0, abs=1e-7)


def test_dr_grpo_constant_and_dapo_token_denominators():
    """A = [1, 1]; tokens 2 and 1: sum of -A over tokens = -3. DAPO: -3 / 3 = -1; Dr. GRPO with a
    budget of 4: -3 / (2 * 4) = -0.375; GRPO: (-1 + -1) / 2 = -1."""
    b = _batch([[1.0, 1.0], [1.0, 1.0]], [1.0, 1.0], [[True, True], [True, False]])
    assert DAPOLoss()(b)[0].item() == pytest.approx(-1.0)
    assert DrGRPOLoss()(b, StepSize(3, 2, 4))[0].item() == pytest.approx(-0.375)
    assert GRPOLoss()(b)[0].item() == pytest.approx(-1.0)


def test_clipping_both_sides_and_gradient_sign():
    """eps 0.2. Token ratio 1.5, A = +1: min(1.5, 1.2) = 1.2 -> loss -1.2, clipped (no gradient).
    Token ratio 0.5, A = -1: min(-0.5, -0.8) = -0.8 -> loss 0.8, clipped (no gradient).
    Token ratio 0.5, A = +1: min(0.5, 0.8) = 0.5 -> loss -0.5, unclipped: d loss / d logp = -0.5 < 0
    (gradient descent raises the log-prob of a positive-advantage token)."""
    b = _batch([[1.5], [0.5], [0.5]], [1.0, -1.0, 1.0], [[True], [True], [True]])
    loss, metrics = DAPOLoss(epsilon_low=0.2, epsilon_high=0.2)(b)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 0.5) / 3)
    loss.backward()
    torch.testing.assert_close(b.logps.grad, torch.tensor([[0.0], [0.0], [-0.5 / 3]]))
    assert metrics["clip_ratio/high"].item() == pytest.approx(1 / 3)
    assert metrics["clip_ratio/low"].item() == pytest.approx(1 / 3)


def test_clip_higher_decoupled():
    """epsilon_high 0.28: ratio 1.25 with A = 1 is inside the clip (loss -1.25, gradient -1.25)."""
    b = _batch([[1.25]], [1.0], [[True]])
    loss, _ = DAPOLoss(epsilon_low=0.2, epsilon_high=0.28)(b)
    loss.backward()
    assert loss.item() == pytest.approx(-1.25)
    assert b.logps.grad.item() == pytest.approx(-1.25)
    b2 = _batch([[1.25]], [1.0], [[True]])
    loss2, _ = DAPOLoss(epsilon_low=0.2, epsilon_high=0.2)(b2)
    assert loss2.item() == pytest.approx(-1.2)


def test_gspo_sequence_ratio():
    """Token ratios 2 and 0.5 -> s = exp(mean(log 2, log 0.5)) = 1 for both tokens; A = 1, eps tiny:
    loss = -1 per token; each token's gradient is s * A / |o| = 0.5 (GRPO's would be 2 and 0.5 clipped)."""
    b = _batch([[2.0, 0.5]], [1.0], [[True, True]])
    loss, _ = GSPOLoss()(b)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0)
    torch.testing.assert_close(b.logps.grad, torch.tensor([[-0.5, -0.5]]))
    # ratio exp(mean(log 2, log 2)) = 2 > 1 + 4e-4: clipped, no gradient
    c = _batch([[2.0, 2.0]], [1.0], [[True, True]])
    loss, metrics = GSPOLoss()(c)
    loss.backward()
    assert loss.item() == pytest.approx(-(1 + 4e-4))
    assert c.logps.grad.abs().sum().item() == 0 and metrics["clip_ratio/high"].item() == 1.0


def test_cispo_stop_gradient_clipped_weight():
    """eps_high 0.5: ratio 3 -> weight sg(min(3, 1.5)) = 1.5; loss = -1.5 * A * logp with A = 2:
    value -3 * logp, gradient -3 (not 0 as in the PPO clip: CISPO keeps every token's gradient)."""
    b = _batch([[3.0]], [2.0], [[True]])
    loss, metrics = CISPOLoss(epsilon_high=0.5)(b)
    loss.backward()
    assert loss.item() == pytest.approx(-3.0 * b.logps.item())
    assert b.logps.grad.item() == pytest.approx(-3.0)
    assert metrics["clip_ratio/region"].item() == 1.0


def test_kl_zero_and_ratio_one_on_first_iteration():
    """policy = old = reference: ratio 1, k3 KL 0; loss = -A per token."""
    b = _batch([[1.0, 1.0]], [0.5], [[True, True]])
    b.ref_logps = b.old_logps.clone()
    loss, metrics = GRPOLoss()(b, beta=0.1)
    assert metrics["kl"].item() == 0.0 and metrics["clip_ratio/region"].item() == 0.0
    assert loss.item() == pytest.approx(-0.5)


def test_k3_kl_and_beta_penalty():
    """log pi = log 0.5, log ref = log 0.25: delta = log 0.5, k3 = 0.5 - log 0.5 - 1 = 0.193147."""
    kl = k3_kl(torch.tensor([LN(0.5)]), torch.tensor([LN(0.25)]))
    assert kl.item() == pytest.approx(0.5 - LN(0.5) - 1)
    b = _batch([[1.0]], [0.0], [[True]])
    b.ref_logps = b.old_logps + LN(0.5)
    loss, _ = GRPOLoss()(b, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (0.5 - LN(0.5) - 1))


def test_truncated_importance_sampling():
    """pi_old / pi_rollout = 0.6 / 0.3 = 2 capped at C = 1.5; 0.3 / 0.6 = 0.5 kept. Loss per token
    (ratio 1, A = 1) = -1 * weight: (-1.5 - 0.5) / 2 = -1."""
    old = torch.tensor([[LN(0.6), LN(0.3)]])
    w = truncated_is_weights(old, torch.tensor([[LN(0.3), LN(0.6)]]), cap=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5]]))
    b = PolicyBatch(
        old.clone().requires_grad_(), old, torch.tensor([1.0]), torch.tensor([[True, True]]), is_weights=w
    )
    loss, _ = DAPOLoss()(b)
    assert loss.item() == pytest.approx(-1.0)


def test_step_normalisation_is_additive_over_splits():
    """Token-level: the sum of the losses of two halves with the step's totals equals the whole."""
    torch.manual_seed(0)
    logps, old = torch.randn(4, 5) * 0.1 - 1, torch.randn(4, 5) * 0.1 - 1
    adv, mask = torch.randn(4), torch.rand(4, 5) > 0.3
    for loss_fn in (DAPOLoss(), GRPOLoss(), DrGRPOLoss(), GSPOLoss(), CISPOLoss()):
        whole = loss_fn(PolicyBatch(logps, old, adv, mask))[0]
        step = StepSize(float(mask.sum()), 4.0, 5)
        parts = sum(
            loss_fn(PolicyBatch(logps[s], old[s], adv[s], mask[s]), step)[0]
            for s in (slice(0, 1), slice(1, 4))
        )
        torch.testing.assert_close(parts, whole)


def test_advantages_by_hand():
    """Rewards [[1, 0, 0, 1], [2, 2, 2, 2]]: group means 0.5 and 2; std (unbiased) of [1, 0, 0, 1] =
    sqrt(1/3) = 0.57735."""
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    std = math.sqrt(1 / 3)
    grpo = GRPOAdvantage(eps=0.0)(r)
    torch.testing.assert_close(grpo[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std)
    assert GRPOAdvantage()(r)[1].abs().sum().item() == 0  # zero spread: 0 / (0 + eps)
    torch.testing.assert_close(DrGRPOAdvantage()(r), torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]))
    # RLOO: 1 - mean(0, 0, 1) = 2/3; 0 - mean(1, 0, 1) = -2/3
    torch.testing.assert_close(RLOOAdvantage()(r)[0], torch.tensor([2, -2, -2, 2]) / 3)
    # batch scale: centred / std of all 8 rewards
    batch_std = r.std().item()
    torch.testing.assert_close(
        GRPOAdvantage("batch", eps=0.0)(r)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / batch_std
    )
    # REINFORCE++ baseline: centred [.5,-.5,-.5,.5,0,0,0,0] has mean 0, std sqrt(1/7)
    rpp = ReinforcePlusPlusAdvantage(eps=0.0)(r)
    torch.testing.assert_close(rpp[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / math.sqrt(1 / 7))


def test_zero_spread_groups():
    r = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0], [1.0, 1.0 + 1e-6]])
    assert zero_spread_groups(r).tolist() == [False, True, True, False]
