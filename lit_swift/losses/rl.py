"""GRPO-family policy losses and advantage estimators: pure tensor math over completion tokens.

A loss sees per-token log-probs of the current policy, of the policy that sampled (`old_logps`) and
optionally of the reference, plus one advantage per completion. It returns its share of the whole
optimizer step's loss: the caller passes the step's totals (`StepSize`), so summing the returned
losses over micro-batches and ranks gives exactly the loss of the step seen as one batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lit_swift.losses.functional import masked_mean


@dataclass
class PolicyBatch:
    """Per-token inputs of a policy loss over N completions padded to T tokens."""

    logps: Tensor  # [N, T] current policy (with grad)
    old_logps: Tensor  # [N, T] the policy that sampled, recomputed by the trainer (no grad)
    advantages: Tensor  # [N]
    mask: Tensor  # [N, T] bool: completion tokens that are trained
    ref_logps: Tensor | None = None  # [N, T] reference policy (KL penalty)
    is_weights: Tensor | None = None  # [N, T] truncated importance weights (TIS), no grad


@dataclass
class StepSize:
    """Totals of the whole optimizer step (all micro-batches, all ranks) that normalise the loss.

    Args:
        num_tokens: trained completion tokens in the step.
        num_sequences: completions in the step.
        max_completion_length: the generation budget (Dr. GRPO's constant divisor).
    """

    num_tokens: float
    num_sequences: float
    max_completion_length: int = 1

    @classmethod
    def of(cls, batch: PolicyBatch) -> StepSize:
        """The batch alone is the step."""
        return cls(float(batch.mask.sum()), float(batch.mask.shape[0]), batch.mask.shape[1])


def k3_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """Per-token KL(pi || ref) estimator k3 = exp(ref - pi) - (ref - pi) - 1 >= 0 (Schulman 2020)."""
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1


def truncated_is_weights(old_logps: Tensor, rollout_logps: Tensor, cap: float) -> Tensor:
    """TIS weights min(pi_old / pi_rollout, C) per token (Yao et al. 2025, "Your efficient RL framework
    secretly brings you off-policy RL training"): correct for an engine whose log-probs differ from the
    trainer's. # [N, T]"""
    return torch.exp(old_logps - rollout_logps).clamp(max=cap).detach()


class PolicyLoss(ABC):
    """Per-token loss, TIS weighting, k3 KL penalty and one of three normalisations.

    Subclasses define `token_losses` (before TIS and KL); `reduce` is the normalisation:
    `sequence` (mean over each completion's tokens, then over completions: GRPO), `token` (sum over
    all tokens / tokens in the step: DAPO, "bnpo") or `constant` (sum / (completions x generation
    budget): Dr. GRPO).
    """

    normalisation: Literal["sequence", "token", "constant"] = "sequence"

    def __init__(self, epsilon_low: float = 0.2, epsilon_high: float | None = None):
        self.epsilon_low = epsilon_low
        self.epsilon_high = epsilon_low if epsilon_high is None else epsilon_high

    @abstractmethod
    def token_losses(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-token losses before TIS weighting and KL [N, T], and detached metrics."""

    def __call__(
        self, batch: PolicyBatch, step: StepSize | None = None, beta: float = 0.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        step = step or StepSize.of(batch)
        losses, metrics = self.token_losses(batch)  # [N, T]
        if batch.is_weights is not None:
            losses = losses * batch.is_weights
        if beta and batch.ref_logps is not None:
            kl = k3_kl(batch.logps, batch.ref_logps)  # [N, T]
            losses = losses + beta * kl
            metrics["kl"] = masked_mean(kl.detach(), batch.mask)
        return self.reduce(losses, batch.mask, step), {k: v.detach() for k, v in metrics.items()}

    def reduce(self, losses: Tensor, mask: Tensor, step: StepSize) -> Tensor:
        m = mask.to(losses.dtype)
        if self.normalisation == "sequence":
            per_sequence = (losses * m).sum(-1) / m.sum(-1).clamp(min=1)  # [N]
            return per_sequence.sum() / step.num_sequences
        if self.normalisation == "token":
            return (losses * m).sum() / max(step.num_tokens, 1.0)
        return (losses * m).sum() / (step.num_sequences * step.max_completion_length)


def clip_metrics(ratio: Tensor, advantages: Tensor, mask: Tensor, low: float, high: float) -> dict:
    """Fractions of tokens whose ratio the clip cut (low side: A < 0; high side: A > 0)."""
    low_clip = (ratio < 1 - low) & (advantages < 0)
    high_clip = (ratio > 1 + high) & (advantages > 0)
    return {
        "clip_ratio/low": masked_mean(low_clip.float(), mask),
        "clip_ratio/high": masked_mean(high_clip.float(), mask),
        "clip_ratio/region": masked_mean((low_clip | high_clip).float(), mask),
    }


def clipped_surrogate(
    ratio: Tensor, batch: PolicyBatch, epsilon_low: float, epsilon_high: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """-min(r A, clip(r, 1 - epsilon_low, 1 + epsilon_high) A) per token, for any ratio r [N, T]."""
    a = batch.advantages[:, None]  # [N, 1]
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    losses = -torch.minimum(ratio * a, clipped * a)  # [N, T]
    metrics = clip_metrics(ratio.detach(), a.expand_as(ratio), batch.mask, epsilon_low, epsilon_high)
    return losses, metrics


class GRPOLoss(PolicyLoss):
    """PPO clipped surrogate per token, mean per completion then over completions (Shao et al. 2024,
    DeepSeekMath, arXiv:2402.03300). `epsilon_high > epsilon_low` is DAPO's clip-higher.

    Args:
        epsilon_low: lower clip: ratio >= 1 - epsilon_low.
        epsilon_high: upper clip: ratio <= 1 + epsilon_high (default `epsilon_low`).
    """

    normalisation = "sequence"

    def token_losses(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        ratio = torch.exp(batch.logps - batch.old_logps)  # [N, T]
        return clipped_surrogate(ratio, batch, self.epsilon_low, self.epsilon_high)


class DAPOLoss(GRPOLoss):
    """Clipped surrogate, token-level mean over the whole step, clip-higher by default (Yu et al. 2025,
    DAPO, arXiv:2503.14476).

    Args:
        epsilon_low: lower clip.
        epsilon_high: upper clip (DAPO: 0.28).
    """

    normalisation = "token"

    def __init__(self, epsilon_low: float = 0.2, epsilon_high: float | None = 0.28):
        super().__init__(epsilon_low, epsilon_high)


class DrGRPOLoss(GRPOLoss):
    """Clipped surrogate summed over tokens and divided by a constant, completions x generation budget,
    so no length bias (Liu et al. 2025, "Understanding R1-Zero-like training", arXiv:2503.20783)."""

    normalisation = "constant"


class GSPOLoss(PolicyLoss):
    """Sequence-level importance ratio s_i = exp(mean_t(log pi - log pi_old)), clipped per completion
    (Zheng et al. 2025, GSPO, arXiv:2507.18071); the GSPO-token form, whose value and gradient equal
    GSPO's when every token of a completion shares its advantage.

    Args:
        epsilon_low: lower clip of s_i (paper: 3e-4).
        epsilon_high: upper clip of s_i (paper: 4e-4).
    """

    normalisation = "sequence"

    def __init__(self, epsilon_low: float = 3e-4, epsilon_high: float | None = 4e-4):
        super().__init__(epsilon_low, epsilon_high)

    def token_losses(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = masked_mean(batch.logps - batch.old_logps, batch.mask, dim=-1)  # [N]
        # s_i,t = sg[s_i] * pi_t / sg[pi_t]: the value s_i, the gradient s_i * d log pi_t
        ratio = torch.exp(log_ratio.detach()[:, None] + batch.logps - batch.logps.detach())  # [N, T]
        return clipped_surrogate(ratio, batch, self.epsilon_low, self.epsilon_high)


class CISPOLoss(PolicyLoss):
    """REINFORCE on every token with a clipped, stop-gradient importance weight:
    -sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * log pi, token-level mean (MiniMax 2025, MiniMax-M1,
    arXiv:2506.13585). No token's gradient is dropped, only its weight bounded.

    Args:
        epsilon_low: lower clip of the weight (the paper sets none: the default 1.0 keeps r >= 0).
        epsilon_high: upper clip of the weight.
    """

    normalisation = "token"

    def __init__(self, epsilon_low: float = 1.0, epsilon_high: float | None = 4.0):
        super().__init__(epsilon_low, epsilon_high)

    def token_losses(self, batch: PolicyBatch) -> tuple[Tensor, dict[str, Tensor]]:
        ratio = torch.exp(batch.logps - batch.old_logps).detach()  # [N, T]
        weight = ratio.clamp(1 - self.epsilon_low, 1 + self.epsilon_high)
        a = batch.advantages[:, None]  # [N, 1]
        losses = -weight * a * batch.logps  # [N, T]
        clipped = (ratio > 1 + self.epsilon_high) | (ratio < 1 - self.epsilon_low)
        return losses, {"clip_ratio/region": masked_mean(clipped.float(), batch.mask)}


# ----- advantage estimators: rewards [P, G] (P prompts, G completions each) -> advantages [P, G] -----


class AdvantageEstimator(ABC):
    """Turns the rewards of P groups of G completions into one advantage per completion."""

    needs_batch = True
    """Whether it uses statistics over all groups (the objective then gathers every rank's groups)."""

    @abstractmethod
    def __call__(self, rewards: Tensor) -> Tensor:
        """Advantages of the completions. # [P, G]"""


class GRPOAdvantage(AdvantageEstimator):
    """(r - group mean) / std (Shao et al. 2024, DeepSeekMath).

    Args:
        scale_rewards: divide by the group's std (`group`, GRPO), the whole batch's (`batch`, more
            robust with few completions per prompt) or not at all (`none`, Dr. GRPO).
        eps: added to the std.
    """

    def __init__(self, scale_rewards: Literal["group", "batch", "none"] = "group", eps: float = 1e-4):
        self.scale_rewards, self.eps = scale_rewards, eps
        self.needs_batch = scale_rewards == "batch"

    def __call__(self, rewards: Tensor) -> Tensor:
        centred = rewards - rewards.mean(-1, keepdim=True)  # [P, G]
        if self.scale_rewards == "none":
            return centred
        std = rewards.std(-1, keepdim=True) if self.scale_rewards == "group" else rewards.std()
        return centred / (std + self.eps)


class DrGRPOAdvantage(GRPOAdvantage):
    """r - group mean, no std division (Liu et al. 2025, Dr. GRPO): no difficulty bias."""

    def __init__(self):
        super().__init__(scale_rewards="none")


class RLOOAdvantage(AdvantageEstimator):
    """r_i - mean of the other G-1 rewards = G/(G-1) (r_i - mean) (Ahmadian et al. 2024, "Back to
    basics", arXiv:2402.14740)."""

    needs_batch = False

    def __call__(self, rewards: Tensor) -> Tensor:
        g = rewards.shape[-1]
        assert g > 1, "RLOO needs at least 2 completions per prompt"
        return (rewards - rewards.mean(-1, keepdim=True)) * g / (g - 1)


class ReinforcePlusPlusAdvantage(AdvantageEstimator):
    """REINFORCE++ (Hu 2025, arXiv:2501.03262): rewards normalised over the whole batch, optionally
    after subtracting the group mean (the "REINFORCE++-baseline" variant).

    Args:
        group_baseline: subtract each group's mean first.
        eps: added to the batch std.
    """

    def __init__(self, group_baseline: bool = True, eps: float = 1e-4):
        self.group_baseline, self.eps = group_baseline, eps

    def __call__(self, rewards: Tensor) -> Tensor:
        centred = rewards - rewards.mean(-1, keepdim=True) if self.group_baseline else rewards
        return (centred - centred.mean()) / (centred.std() + self.eps)


def zero_spread_groups(rewards: Tensor, tolerance: float = 0.0) -> Tensor:
    """Groups whose rewards are all equal (no learning signal: DAPO's dynamic sampling drops them). # [P]"""
    return (rewards.max(-1).values - rewards.min(-1).values) <= tolerance
