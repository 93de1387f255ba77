"""KTO loss against hand-worked numbers: mixed, all-desirable and all-undesirable batches, z0 handling.

Shared batch (B=3), beta = 0.1:
    policy = [-10, -12, -9], reference = [-11, -11, -9]  -> r = [1, -1, 0]
    policy_kl - reference_kl = [0.5, 0.5, 0.5]          -> z0 = 0.5, so r - z0 = [0.5, -1.5, -0.5]
Useful: sigma(-x) = 1 - sigma(x); sigma(0.15) = 0.537430.
"""

import math

import torch
from torch.testing import assert_close

from lit_swift.losses.kto import KTOLogps, KTOLoss, kto_kl_estimate


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def make_logps(desirable: list[bool], ref_grad: bool = False) -> KTOLogps:
    return KTOLogps(
        policy=torch.tensor([-10.0, -12.0, -9.0], requires_grad=True),  # [B]
        reference=torch.tensor([-11.0, -11.0, -9.0], requires_grad=ref_grad),  # [B]
        policy_kl=torch.tensor([-20.0, -21.0, -19.0], requires_grad=True),  # [B]
        reference_kl=torch.tensor([-20.5, -21.5, -19.5], requires_grad=ref_grad),  # [B]
        desirable=torch.tensor(desirable),  # [B]
    )


def test_kto_mixed_batch_hand_values():
    """desirable = [T, F, T], desirable_weight 1, undesirable_weight 2.

    example 0 (desirable):   1 - sigma(0.1 * 0.5)  = 1 - sigma(0.05)
    example 1 (undesirable): 2 * (1 - sigma(0.1 * (0.5 + 1))) = 2 * (1 - sigma(0.15))
    example 2 (desirable):   1 - sigma(-0.05) = sigma(0.05)
    sum = 1 + 2 - 2 * 0.537430 = 1.925140; loss = sum / B = 0.641713
    rewards = 0.1 * r = [0.1, -0.1, 0]: desirable mean 0.05, undesirable mean -0.1; kl = 0.5.
    Gradients: desirable d/d policy = -beta * s(1-s) * w / B < 0, undesirable > 0; no grad to policy_kl.
    """
    logps = make_logps([True, False, True], ref_grad=True)
    loss, metrics = KTOLoss(beta=0.1, desirable_weight=1.0, undesirable_weight=2.0)(logps)
    assert_close(loss, torch.tensor((3 - 2 * sigmoid(0.15)) / 3))
    assert_close(loss, torch.tensor(0.641713), atol=1e-6, rtol=0)
    assert_close(metrics["kl"], torch.tensor(0.5))
    assert_close(metrics["rewards/desirable"], torch.tensor(0.05))
    assert_close(metrics["rewards/undesirable"], torch.tensor(-0.1))
    assert_close(metrics["rewards/desirable_sum"], torch.tensor(0.1))
    assert_close(metrics["num_desirable"], torch.tensor(2.0))
    assert_close(metrics["num_undesirable"], torch.tensor(1.0))

    loss.backward()
    s = sigmoid(0.15)
    expected = [
        -0.1 * sigmoid(0.05) * (1 - sigmoid(0.05)) / 3,
        2 * 0.1 * s * (1 - s) / 3,
        -0.1 * sigmoid(-0.05) * (1 - sigmoid(-0.05)) / 3,
    ]
    assert_close(logps.policy.grad, torch.tensor(expected))
    assert logps.policy_kl.grad is None
    assert logps.reference.grad is None and logps.reference_kl.grad is None
    assert all(not value.requires_grad for value in metrics.values())


def test_kto_all_desirable():
    """desirable = [T, T, T], losses 1 - sigma(0.1 (r - z0)):
    1 - sigma(0.05), 1 - sigma(-0.15) = sigma(0.15), 1 - sigma(-0.05) = sigma(0.05).

    sum = 1 + sigma(0.15) = 1.537430; loss = 0.512477. Undesirable metrics read 0 with count 0 (no NaN).
    """
    loss, metrics = KTOLoss(beta=0.1)(make_logps([True, True, True]))
    assert_close(loss, torch.tensor((1 + sigmoid(0.15)) / 3))
    assert_close(loss, torch.tensor(0.512477), atol=1e-6, rtol=0)
    assert_close(metrics["rewards/undesirable"], torch.tensor(0.0))
    assert_close(metrics["num_undesirable"], torch.tensor(0.0))
    assert_close(metrics["rewards/desirable"], torch.tensor(0.0))


def test_kto_all_undesirable():
    """desirable = [F, F, F], losses 1 - sigma(0.1 (z0 - r)):
    1 - sigma(-0.05), 1 - sigma(0.15), 1 - sigma(0.05).

    sum = 1 + 1 - sigma(0.15) = 1.462570; loss = 0.487523.
    """
    logps = make_logps([False, False, False])
    loss, metrics = KTOLoss(beta=0.1)(logps)
    assert_close(loss, torch.tensor((2 - sigmoid(0.15)) / 3))
    assert_close(loss, torch.tensor(0.487523), atol=1e-6, rtol=0)
    assert_close(metrics["num_desirable"], torch.tensor(0.0))
    loss.backward()
    assert (logps.policy.grad > 0).all()


def test_kto_kl_clamped_and_overridden():
    """z0 = max(0, mean(policy_kl - reference_kl)): a negative mean -0.5 clamps to 0.

    With a kl=0 override on the shared batch, all desirable, r = [1, -1, 0]:
    losses [1 - sigma(0.1), 1 - sigma(-0.1), 1 - sigma(0)] -> sum 1 + 0.5 = 1.5, loss 0.5 exactly.
    """
    assert_close(kto_kl_estimate(torch.tensor([-1.0, -2.0]), torch.tensor([-0.5, -1.5])), torch.tensor(0.0))
    estimate = kto_kl_estimate(torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([0.0, 0.0]))
    assert_close(estimate, torch.tensor(1.5))
    assert not estimate.requires_grad

    loss, metrics = KTOLoss(beta=0.1)(make_logps([True, True, True]), kl=torch.tensor(0.0))
    assert_close(loss, torch.tensor(0.5))
    assert_close(metrics["kl"], torch.tensor(0.0))
