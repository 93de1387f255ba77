"""KTO loss over unpaired desirable/undesirable completions: `KTOLoss()(KTOLogps) -> (loss, metrics)`.

The KL reference point comes from mismatched (prompt_i, completion_j) pairs; see `kto_kl_estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class KTOLogps:
    """Per-example sequence statistics a KTO objective computes once per batch.

    Attributes:
        policy: Summed completion log-probs under the policy, `[B]`.
        reference: Summed completion log-probs under the reference model, `[B]`.
        policy_kl: Summed log-probs of mismatched (prompt_i, completion_j) pairs under the policy, `[B]`.
        reference_kl: The same mismatched pairs under the reference model, `[B]`.
        desirable: True where the completion is desirable, `[B]` bool.
    """

    policy: Tensor
    reference: Tensor
    policy_kl: Tensor
    reference_kl: Tensor
    desirable: Tensor


def kto_kl_estimate(policy_kl: Tensor, reference_kl: Tensor) -> Tensor:
    """The reference point z0 = max(0, mean(policy_kl - reference_kl)), detached (a scalar).

    Averages over whatever it is given: the local batch by default. Under DDP an objective can gather
    the mismatched log-probs from every rank first, e.g.
    `kto_kl_estimate(self.all_gather(policy_kl).flatten(), self.all_gather(reference_kl).flatten())`,
    and pass the result to `KTOLoss(..., kl=...)`, so every rank uses the same z0.
    """
    # No gradient flows through z0, as in the paper: it only sets the reference point.
    return (policy_kl - reference_kl).mean().clamp(min=0).detach()


class KTOLoss:
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306).

    With r = policy - reference (summed log ratio) and z0 from `kto_kl_estimate`, a desirable example
    costs `desirable_weight * (1 - sigma(beta (r - z0)))`, an undesirable one
    `undesirable_weight * (1 - sigma(beta (z0 - r)))`. The loss is the sum over the batch divided by the
    batch size (both kinds together), i.e. the plain mean of the per-example losses, so a step's
    gradient does not depend on how desirable and undesirable examples are split across batches. To
    rebalance unequal counts, set the weights (the paper suggests
    `desirable_weight * num_desirable / (undesirable_weight * num_undesirable)` in [1, 4/3]).

    Args:
        beta: Inverse temperature of the implicit reward; smaller stays closer to the reference.
        desirable_weight: Weight lambda_D of desirable examples.
        undesirable_weight: Weight lambda_U of undesirable examples.
    """

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def __call__(self, logps: KTOLogps, kl: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns the scalar loss and detached metrics; `kl` overrides the local z0 (e.g. all-reduced)."""
        kl = kto_kl_estimate(logps.policy_kl, logps.reference_kl) if kl is None else kl.detach()
        ratio = logps.policy - logps.reference.detach()  # [B]
        desirable = logps.desirable  # [B]
        losses = torch.where(  # [B]
            desirable,
            self.desirable_weight * (1 - torch.sigmoid(self.beta * (ratio - kl))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - ratio))),
        )
        rewards = (self.beta * ratio).detach()  # [B]
        num_desirable = desirable.sum()
        num_undesirable = (~desirable).sum()
        desirable_sum = rewards[desirable].sum()
        undesirable_sum = rewards[~desirable].sum()
        # Means read 0 for a kind absent from the batch; the sums and counts aggregate exactly.
        metrics = {
            "kl": kl,
            "rewards/desirable": desirable_sum / num_desirable.clamp(min=1),
            "rewards/undesirable": undesirable_sum / num_undesirable.clamp(min=1),
            "rewards/desirable_sum": desirable_sum,
            "rewards/undesirable_sum": undesirable_sum,
            "num_desirable": num_desirable.float(),
            "num_undesirable": num_undesirable.float(),
        }
        return losses.mean(), metrics
