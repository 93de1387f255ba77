"""Preference losses against hand-worked numbers on one tiny batch, plus gradient signs and metrics.

Shared batch (B=2), `sp(x) = log(1 + e^x)` so `-log sigma(x) = sp(-x)` and `sp(x) - sp(-x) = x`:
    chosen = [-10, -12], rejected = [-14, -11], chosen_tokens = [5, 4], rejected_tokens = [2, 2]
    ref_chosen = [-11, -12], ref_rejected = [-13, -12]
    summed log ratios:     chosen [1, 0],       rejected [-1, 1],      h = [2, -1]
    token-mean logps:      chosen [-2, -3],     rejected [-7, -5.5]
    token-mean log ratios: chosen [0.2, 0],     rejected [-0.5, 0.5],  h_mean = [0.7, -0.5]
"""

import math

import pytest
import torch
from torch.testing import assert_close

from lit_swift.losses.preference import (
    CPO,
    IPO,
    ORPO,
    RPO,
    APOZero,
    Combined,
    Hinge,
    PairLogps,
    RobustDPO,
    SigmoidDPO,
    SimPO,
)


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def make_logps(reference: bool = True, ref_grad: bool = False) -> PairLogps:
    def leaf(values, grad=True):
        return torch.tensor(values, requires_grad=grad)

    return PairLogps(
        chosen=leaf([-10.0, -12.0]),  # [B]
        rejected=leaf([-14.0, -11.0]),  # [B]
        chosen_tokens=torch.tensor([5, 4]),  # [B]
        rejected_tokens=torch.tensor([2.0, 2.0]),  # [B]
        ref_chosen=leaf([-11.0, -12.0], ref_grad) if reference else None,  # [B]
        ref_rejected=leaf([-13.0, -12.0], ref_grad) if reference else None,  # [B]
    )


def test_sigmoid_dpo_hand_values():
    """beta = 0.1: beta h = [0.2, -0.1].

    loss = (sp(-0.2) + sp(0.1)) / 2 = (0.598139 + 0.744397) / 2 = 0.671268
    rewards: chosen 0.1 * [1, 0] -> mean 0.05; rejected 0.1 * [-1, 1] -> mean 0
    margin = mean([0.2, -0.1]) = 0.05; accuracy = 1/2 (only pair 0 ordered right)
    logps: chosen mean -11, rejected mean -12.5
    """
    loss, metrics = SigmoidDPO(beta=0.1)(make_logps())
    assert_close(loss, torch.tensor((sp(-0.2) + sp(0.1)) / 2))
    assert_close(loss, torch.tensor(0.671268), atol=1e-6, rtol=0)
    assert_close(metrics["rewards/chosen"], torch.tensor(0.05))
    assert_close(metrics["rewards/rejected"], torch.tensor(0.0))
    assert_close(metrics["rewards/margin"], torch.tensor(0.05))
    assert_close(metrics["rewards/accuracy"], torch.tensor(0.5))
    assert_close(metrics["logps/chosen"], torch.tensor(-11.0))
    assert_close(metrics["logps/rejected"], torch.tensor(-12.5))


def test_conservative_dpo_hand_values():
    """cDPO, beta = 0.1, eps = 0.2: per pair (1-eps) sp(-x) + eps sp(x) = sp(-x) + eps x, x = beta h.

    loss = 0.671268 + 0.2 * mean([0.2, -0.1]) = 0.671268 + 0.01 = 0.681268
    """
    loss, _ = SigmoidDPO(beta=0.1, label_smoothing=0.2)(make_logps())
    assert_close(loss, torch.tensor((0.8 * sp(-0.2) + 0.2 * sp(0.2) + 0.8 * sp(0.1) + 0.2 * sp(-0.1)) / 2))
    assert_close(loss, torch.tensor(0.681268), atol=1e-6, rtol=0)


def test_robust_dpo_hand_values():
    """beta = 0.1, eps = 0.1: per pair ((1-eps) sp(-x) - eps sp(x)) / (1 - 2 eps), x = beta h = [0.2, -0.1].

    With sp(x) = sp(-x) + x this is (0.8 sp(-x) - 0.1 x) / 0.8 = sp(-x) - x / 8, so
    loss = 0.671268 - mean([0.2, -0.1]) / 8 = 0.671268 - 0.00625 = 0.665018
    """
    loss, _ = RobustDPO(beta=0.1, label_smoothing=0.1)(make_logps())
    assert_close(
        loss, torch.tensor((0.9 * sp(-0.2) - 0.1 * sp(0.2) + 0.9 * sp(0.1) - 0.1 * sp(-0.1)) / 2 / 0.8)
    )
    assert_close(loss, torch.tensor(0.665018), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        RobustDPO(label_smoothing=0.5)


def test_ipo_hand_values():
    """beta = 0.5: target 1 / (2 beta) = 1, on token-mean log ratios h_mean = [0.7, -0.5].

    loss = ((0.7 - 1)^2 + (-0.5 - 1)^2) / 2 = (0.09 + 2.25) / 2 = 1.17
    rewards (token-mean): chosen 0.5 * [0.2, 0] -> 0.05, rejected 0.5 * [-0.5, 0.5] -> 0;
    margin = mean([0.35, -0.25]) = 0.05; accuracy 1/2.
    """
    loss, metrics = IPO(beta=0.5)(make_logps())
    assert_close(loss, torch.tensor(1.17))
    assert_close(metrics["rewards/chosen"], torch.tensor(0.05))
    assert_close(metrics["rewards/rejected"], torch.tensor(0.0))
    assert_close(metrics["rewards/margin"], torch.tensor(0.05))
    assert_close(metrics["rewards/accuracy"], torch.tensor(0.5))


def test_hinge_hand_values_and_gradient():
    """beta = 0.1: relu(1 - beta h) = relu(1 - [0.2, -0.1]) = [0.8, 1.1]; loss = 0.95.

    Both pairs are inside the margin, so d loss / d chosen = -beta / B = -0.05 and
    d loss / d rejected = +0.05 for each pair.
    """
    logps = make_logps()
    loss, _ = Hinge(beta=0.1)(logps)
    assert_close(loss, torch.tensor(0.95))
    loss.backward()
    assert_close(logps.chosen.grad, torch.tensor([-0.05, -0.05]))
    assert_close(logps.rejected.grad, torch.tensor([0.05, 0.05]))


def test_apo_zero_hand_values():
    """beta = 0.1: per pair 1 - sigma(beta r_chosen) + sigma(beta r_rejected).

    r_chosen = [1, 0], r_rejected = [-1, 1]:
    pair 0: 1 - sigma(0.1) + sigma(-0.1) = 2 - 2 sigma(0.1); pair 1: 1 - 0.5 + sigma(0.1)
    loss = (2.5 - sigma(0.1)) / 2 = (2.5 - 0.524979) / 2 = 0.987510
    """
    loss, _ = APOZero(beta=0.1)(make_logps())
    assert_close(loss, torch.tensor((2.5 - sigmoid(0.1)) / 2))
    assert_close(loss, torch.tensor(0.987510), atol=1e-6, rtol=0)


def test_rpo_hand_values():
    """beta = 0.1, alpha = 0.5: DPO 0.671268 + alpha * NLL.

    NLL = -mean(token-mean chosen) = mean([2, 3]) = 2.5
    loss = 0.671268 + 0.5 * 2.5 = 1.921268
    d loss / d chosen_i = -beta sigma(-beta h_i) / B - alpha / (B n_i), n = [5, 4]:
    [-0.05 sigma(-0.2) - 0.05, -0.05 sigma(0.1) - 0.0625] = [-0.072508, -0.088749]
    """
    logps = make_logps()
    loss, metrics = RPO(beta=0.1, alpha=0.5)(logps)
    assert_close(loss, torch.tensor((sp(-0.2) + sp(0.1)) / 2 + 1.25))
    loss.backward()
    expected = [-0.05 * sigmoid(-0.2) - 0.05, -0.05 * sigmoid(0.1) - 0.0625]
    assert_close(logps.chosen.grad, torch.tensor(expected))
    assert_close(logps.chosen.grad, torch.tensor([-0.072508, -0.088749]), atol=1e-6, rtol=0)
    assert_close(metrics["nll"], torch.tensor(2.5))
    assert_close(metrics["dpo"], torch.tensor(0.671268), atol=1e-6, rtol=0)


def test_simpo_hand_values_without_reference():
    """beta = 0.5, gamma = 1, no reference: x = beta (mean chosen - mean rejected) - gamma.

    mean chosen - mean rejected = [-2 + 7, -3 + 5.5] = [5, 2.5]; x = [2.5 - 1, 1.25 - 1] = [1.5, 0.25]
    loss = (sp(-1.5) + sp(-0.25)) / 2 = (0.201413 + 0.575939) / 2 = 0.388676
    rewards: chosen 0.5 * [-2, -3] -> -1.25, rejected 0.5 * [-7, -5.5] -> -3.125; margin 1.875; accuracy 1.
    """
    logps = make_logps(reference=False)
    loss_fn = SimPO(beta=0.5, gamma=1.0)
    assert loss_fn.needs_reference is False
    loss, metrics = loss_fn(logps)
    assert_close(loss, torch.tensor((sp(-1.5) + sp(-0.25)) / 2))
    assert_close(loss, torch.tensor(0.388676), atol=1e-6, rtol=0)
    assert_close(metrics["rewards/chosen"], torch.tensor(-1.25))
    assert_close(metrics["rewards/rejected"], torch.tensor(-3.125))
    assert_close(metrics["rewards/margin"], torch.tensor(1.875))
    assert_close(metrics["rewards/accuracy"], torch.tensor(1.0))


def test_orpo_hand_values_without_reference():
    """beta = 0.1, no reference; log odds(a) = a - log(1 - e^a) on token means a.

    chosen: lo(-2) = -2 + 0.145413 = -1.854587, lo(-3) = -3 + 0.051069 = -2.948931
    rejected: lo(-7) = -7 + 0.000912 = -6.999088, lo(-5.5) = -5.5 + 0.004095 = -5.495905
    log odds ratio = [5.144501, 2.546974]; sp(-ratio) = [0.005814, 0.075403] -> mean 0.040609
    NLL = mean([2, 3]) = 2.5; loss = 2.5 + 0.1 * 0.040609 = 2.504061
    """
    logps = make_logps(reference=False)
    loss_fn = ORPO(beta=0.1)
    assert loss_fn.needs_reference is False
    loss, metrics = loss_fn(logps)

    def lo(a: float) -> float:
        return a - math.log(1 - math.exp(a))

    ratios = [lo(-2) - lo(-7), lo(-3) - lo(-5.5)]
    assert_close(loss, torch.tensor(2.5 + 0.1 * (sp(-ratios[0]) + sp(-ratios[1])) / 2))
    assert_close(loss, torch.tensor(2.504061), atol=1e-6, rtol=0)
    assert_close(metrics["nll"], torch.tensor(2.5))
    assert_close(metrics["log_odds_ratio"], torch.tensor(sum(ratios) / 2))


def test_orpo_log_odds_finite_near_certainty():
    """Token-mean logp -1e-6 (p ~ 1): log(1 - p) ~ log(1e-6) = -13.8155, log odds ~ 13.8155; grads finite."""
    logps = PairLogps(
        chosen=torch.tensor([-1e-6], dtype=torch.float64, requires_grad=True),  # [B]
        rejected=torch.tensor([-3.0], dtype=torch.float64, requires_grad=True),  # [B]
        chosen_tokens=torch.tensor([1]),  # [B]
        rejected_tokens=torch.tensor([1]),  # [B]
    )
    loss, metrics = ORPO()(logps)
    loss.backward()
    expected_ratio = (-1e-6 - math.log(-math.expm1(-1e-6))) - (-3 - math.log1p(-math.exp(-3)))
    assert_close(metrics["log_odds_ratio"], torch.tensor(expected_ratio, dtype=torch.float64))
    assert torch.isfinite(logps.chosen.grad).all() and torch.isfinite(logps.rejected.grad).all()


def test_cpo_hand_values_without_reference():
    """beta = 0.1, alpha = 1, no reference: beta (chosen - rejected) = 0.1 * [4, -1] = [0.4, -0.1].

    preference = (sp(-0.4) + sp(0.1)) / 2 = (0.513015 + 0.744397) / 2 = 0.628706
    loss = 0.628706 + 1 * NLL 2.5 = 3.128706
    rewards: chosen 0.1 * [-10, -12] -> -1.1, rejected 0.1 * [-14, -11] -> -1.25; accuracy 1/2.
    """
    logps = make_logps(reference=False)
    loss_fn = CPO(beta=0.1, alpha=1.0)
    assert loss_fn.needs_reference is False
    loss, metrics = loss_fn(logps)
    assert_close(loss, torch.tensor((sp(-0.4) + sp(0.1)) / 2 + 2.5))
    assert_close(loss, torch.tensor(3.128706), atol=1e-6, rtol=0)
    assert_close(metrics["rewards/chosen"], torch.tensor(-1.1))
    assert_close(metrics["rewards/rejected"], torch.tensor(-1.25))
    assert_close(metrics["rewards/accuracy"], torch.tensor(0.5))


def test_combined_weights_and_prefixes():
    """SigmoidDPO (0.671268) + 0.5 * Hinge (0.95) = 0.671268 + 0.475 = 1.146268."""
    loss_fn = Combined([SigmoidDPO(beta=0.1), Hinge(beta=0.1)], weights=[1.0, 0.5])
    assert loss_fn.needs_reference is True
    loss, metrics = loss_fn(make_logps())
    assert_close(loss, torch.tensor((sp(-0.2) + sp(0.1)) / 2 + 0.475))
    assert_close(metrics["Hinge/loss"], torch.tensor(0.95))
    assert_close(metrics["SigmoidDPO/rewards/margin"], torch.tensor(0.05))

    reference_free = Combined([SimPO(), CPO()])
    assert reference_free.needs_reference is False
    loss, _ = reference_free(make_logps(reference=False))
    assert torch.isfinite(loss)

    _, metrics = Combined([SigmoidDPO(beta=0.1), SigmoidDPO(beta=0.2)])(make_logps())
    assert_close(metrics["SigmoidDPO_1/rewards/chosen"], 2 * metrics["SigmoidDPO_0/rewards/chosen"])
    with pytest.raises(ValueError, match="weights"):
        Combined([SigmoidDPO(), Hinge()], weights=[1.0])


ALL_LOSSES = [
    SigmoidDPO(),
    RobustDPO(),
    IPO(),
    Hinge(),
    APOZero(),
    RPO(),
    SimPO(),
    ORPO(),
    CPO(),
    Combined([SigmoidDPO(), SimPO()], weights=[1.0, 0.5]),
]


@pytest.mark.parametrize("loss_fn", ALL_LOSSES, ids=lambda loss_fn: type(loss_fn).__name__)
def test_gradient_signs_and_detached_metrics(loss_fn):
    """Descending the loss raises chosen and lowers rejected log-probs: d/d chosen < 0, d/d rejected > 0.

    At default hyper-parameters every pair here is on the active side (IPO: h_mean < 1 / (2 beta) = 5;
    Hinge: beta h < 1). Reference tensors that require grad still receive none, and metrics are detached.
    """
    logps = make_logps(reference=loss_fn.needs_reference, ref_grad=True)
    loss, metrics = loss_fn(logps)
    loss.backward()
    assert (logps.chosen.grad < 0).all(), logps.chosen.grad
    assert (logps.rejected.grad > 0).all(), logps.rejected.grad
    if loss_fn.needs_reference:
        assert logps.ref_chosen.grad is None and logps.ref_rejected.grad is None
    assert all(not value.requires_grad and torch.isfinite(value) for value in metrics.values())
