"""Pairwise preference losses (DPO family) over per-sequence log-probs: `loss(PairLogps) -> (loss, metrics)`.

An objective computes `PairLogps` once per batch and injects one `PreferenceLoss` (YAML `class_path`).
"""

from __future__ import annotations

import abc
import math
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class PairLogps:
    """Per-pair sequence statistics an objective computes once per batch.

    Attributes:
        chosen: Summed log-probs of the chosen completion tokens under the policy, `[B]`.
        rejected: Summed log-probs of the rejected completion tokens under the policy, `[B]`.
        chosen_tokens: Number of chosen completion tokens (float or long), `[B]`.
        rejected_tokens: Number of rejected completion tokens (float or long), `[B]`.
        ref_chosen: `chosen` under the reference model, `[B]`; None for reference-free losses.
        ref_rejected: `rejected` under the reference model, `[B]`; None for reference-free losses.
    """

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None


class PreferenceLoss(abc.ABC):
    """Base class: `loss(logps)` returns the batch-mean scalar loss and detached metrics.

    Every loss reports `rewards/chosen|rejected|margin|accuracy`, where a reward is `beta` times the
    quantity the loss compares between chosen and rejected: the policy/reference log ratio for
    reference-based losses (summed over tokens, except `IPO`, which compares token means), and the
    policy log-prob itself for reference-free ones (token mean for `SimPO`/`ORPO`, summed for `CPO`).
    So `rewards/accuracy` is the fraction of pairs the loss already orders correctly.
    """

    needs_reference: bool = True

    @abc.abstractmethod
    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]: ...


def _log_ratios(logps: PairLogps) -> tuple[Tensor, Tensor]:
    # The reference model must never receive gradients, whatever the caller passed.
    chosen = logps.chosen - logps.ref_chosen.detach()  # [B]
    rejected = logps.rejected - logps.ref_rejected.detach()  # [B]
    return chosen, rejected


def _token_means(logps: PairLogps) -> tuple[Tensor, Tensor]:
    return logps.chosen / logps.chosen_tokens, logps.rejected / logps.rejected_tokens  # [B], [B]


def _sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """`-(1-eps) log sigma(x) - eps log sigma(-x)` per pair: Bradley-Terry NLL with label noise eps."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)  # [B]


def _metrics(logps: PairLogps, chosen_rewards: Tensor, rejected_rewards: Tensor, **extra: Tensor) -> dict:
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": logps.chosen.mean(),
        "logps/rejected": logps.rejected.mean(),
        **extra,
    }
    return {name: value.detach() for name, value in metrics.items()}


class SigmoidDPO(PreferenceLoss):
    """Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

    `-log sigma(beta * h)` with `h = (log pi/ref)(chosen) - (log pi/ref)(rejected)` over summed
    completion log-probs. `label_smoothing > 0` gives conservative DPO (cDPO, Mitchell 2023,
    https://ericmitchell.ai/cdpo.pdf), which assumes labels are flipped with that probability.

    Args:
        beta: Inverse temperature of the implicit reward; smaller stays closer to the reference.
        label_smoothing: Assumed probability that a preference label is flipped, in [0, 0.5).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        self.beta = beta
        self.label_smoothing = label_smoothing

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        chosen_ratio, rejected_ratio = _log_ratios(logps)
        losses = _sigmoid_loss(self.beta * (chosen_ratio - rejected_ratio), self.label_smoothing)  # [B]
        return losses.mean(), _metrics(logps, self.beta * chosen_ratio, self.beta * rejected_ratio)


class RobustDPO(PreferenceLoss):
    """Robust DPO (Chowdhury et al. 2024, https://arxiv.org/abs/2403.00409).

    Unbiased loss under labels flipped with probability eps:
    `((1-eps) * -log sigma(beta h) - eps * -log sigma(-beta h)) / (1 - 2 eps)`, h as in `SigmoidDPO`.

    Args:
        beta: Inverse temperature of the implicit reward.
        label_smoothing: Label flip probability eps, in [0, 0.5).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1) -> None:
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"RobustDPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
        self.beta = beta
        self.label_smoothing = label_smoothing

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        chosen_ratio, rejected_ratio = _log_ratios(logps)
        logits = self.beta * (chosen_ratio - rejected_ratio)  # [B]
        eps = self.label_smoothing
        losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)  # [B]
        return losses.mean(), _metrics(logps, self.beta * chosen_ratio, self.beta * rejected_ratio)


class IPO(PreferenceLoss):
    """Identity Preference Optimization (Azar et al. 2023, https://arxiv.org/abs/2310.12036).

    `(h - 1/(2 beta))^2`, regressing the log-ratio margin onto a fixed target instead of pushing it to
    infinity. Here `h` uses token-mean log ratios (each sequence's log-prob divided by its token count),
    as TRL does: with summed log-probs the fixed target would mean different things for short and long
    answers. Rewards are therefore also `beta` times token-mean log ratios.

    Args:
        beta: Regularisation strength; the target margin is `1 / (2 beta)`.
    """

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = beta

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        chosen_ratio = (logps.chosen - logps.ref_chosen.detach()) / logps.chosen_tokens  # [B]
        rejected_ratio = (logps.rejected - logps.ref_rejected.detach()) / logps.rejected_tokens  # [B]
        losses = (chosen_ratio - rejected_ratio - 1 / (2 * self.beta)) ** 2  # [B]
        return losses.mean(), _metrics(logps, self.beta * chosen_ratio, self.beta * rejected_ratio)


class Hinge(PreferenceLoss):
    """SLiC hinge loss (Zhao et al. 2023, https://arxiv.org/abs/2305.10425) on DPO log ratios.

    `relu(1 - beta * h)`, h as in `SigmoidDPO`: zero once the margin exceeds `1 / beta`.

    Args:
        beta: Scale of the log-ratio margin; the hinge margin is `1 / beta`.
    """

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = beta

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        chosen_ratio, rejected_ratio = _log_ratios(logps)
        losses = torch.relu(1 - self.beta * (chosen_ratio - rejected_ratio))  # [B]
        return losses.mean(), _metrics(logps, self.beta * chosen_ratio, self.beta * rejected_ratio)


class APOZero(PreferenceLoss):
    """Anchored Preference Optimization, APO-zero (D'Oosterlinck et al. 2024).

    Paper: https://arxiv.org/abs/2408.06266.

    `1 - sigma(beta r_chosen) + sigma(beta r_rejected)` with summed log ratios r: raises chosen and
    lowers rejected likelihood separately, for data whose chosen answers beat the current model.

    Args:
        beta: Inverse temperature of the implicit reward.
    """

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = beta

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        chosen_ratio, rejected_ratio = _log_ratios(logps)
        chosen_rewards, rejected_rewards = self.beta * chosen_ratio, self.beta * rejected_ratio  # [B], [B]
        losses = 1 - torch.sigmoid(chosen_rewards) + torch.sigmoid(rejected_rewards)  # [B]
        return losses.mean(), _metrics(logps, chosen_rewards, rejected_rewards)


class RPO(PreferenceLoss):
    """DPO + NLL on chosen, as in Iterative Reasoning Preference Optimization (Pang et al. 2024,
    https://arxiv.org/abs/2404.19733).

    `SigmoidDPO + alpha * NLL(chosen)`, where NLL is each chosen sequence's token-mean negative
    log-prob averaged over the batch (the same for every token count, unlike a token-weighted mean).

    Args:
        beta: Inverse temperature of the DPO implicit reward.
        alpha: Weight of the chosen NLL term.
    """

    def __init__(self, beta: float = 0.1, alpha: float = 1.0) -> None:
        self.dpo = SigmoidDPO(beta=beta)
        self.alpha = alpha

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        dpo_loss, metrics = self.dpo(logps)
        nll = -(logps.chosen / logps.chosen_tokens).mean()
        return dpo_loss + self.alpha * nll, {**metrics, "nll": nll.detach(), "dpo": dpo_loss.detach()}


class SimPO(PreferenceLoss):
    """Simple Preference Optimization (Meng et al. 2024, https://arxiv.org/abs/2405.14734); reference-free.

    `-log sigma(beta * (mean_logp(chosen) - mean_logp(rejected)) - gamma)` over token-mean policy
    log-probs, with optional label smoothing as in `SigmoidDPO`. `gamma` is the paper's absolute target
    reward margin (not the gamma/beta ratio); the defaults give gamma/beta = 0.5, the ratio the paper
    recommends. Rewards are `beta * mean_logp`.

    Args:
        beta: Scale of the length-normalised reward (the paper uses 2.0 to 2.5).
        gamma: Target reward margin subtracted inside the sigmoid.
        label_smoothing: Assumed probability that a preference label is flipped, in [0, 0.5).
    """

    needs_reference = False

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, label_smoothing: float = 0.0) -> None:
        self.beta = beta
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        chosen_mean, rejected_mean = _token_means(logps)
        chosen_rewards, rejected_rewards = self.beta * chosen_mean, self.beta * rejected_mean  # [B], [B]
        losses = _sigmoid_loss(chosen_rewards - rejected_rewards - self.gamma, self.label_smoothing)  # [B]
        return losses.mean(), _metrics(logps, chosen_rewards, rejected_rewards)


def _log_odds(mean_logp: Tensor) -> Tensor:
    """`log(p / (1 - p))` from `log p < 0`, with `log(1 - p)` computed stably near both ends."""
    log1m_p = torch.where(  # [B]
        mean_logp > -math.log(2), torch.log(-torch.expm1(mean_logp)), torch.log1p(-torch.exp(mean_logp))
    )
    return mean_logp - log1m_p  # [B]


class ORPO(PreferenceLoss):
    """Odds Ratio Preference Optimization (Hong et al. 2024, https://arxiv.org/abs/2403.07691); no reference.

    `NLL(chosen) + beta * -log sigma(log odds(chosen) - log odds(rejected))`, where odds use the
    token-mean probability `p = exp(mean_logp)` and NLL is each chosen sequence's token-mean negative
    log-prob averaged over the batch. Rewards are `beta * mean_logp`, as in TRL.

    Args:
        beta: Weight of the odds-ratio term (the paper's lambda).
    """

    needs_reference = False

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = beta

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        chosen_mean, rejected_mean = _token_means(logps)
        log_odds_ratio = _log_odds(chosen_mean) - _log_odds(rejected_mean)  # [B]
        odds_loss = -F.logsigmoid(log_odds_ratio).mean()
        nll = -chosen_mean.mean()
        metrics = _metrics(
            logps, self.beta * chosen_mean, self.beta * rejected_mean,
            nll=nll, log_odds_ratio=log_odds_ratio.mean(),
        )  # fmt: skip
        return nll + self.beta * odds_loss, metrics


class CPO(PreferenceLoss):
    """Contrastive Preference Optimization (Xu et al. 2024, https://arxiv.org/abs/2401.08417); reference-free.

    `-log sigma(beta * (logp(chosen) - logp(rejected))) + alpha * NLL(chosen)` with summed policy
    log-probs in the sigmoid (the paper's DPO without a reference) and the behaviour-cloning NLL as each
    chosen sequence's token-mean negative log-prob averaged over the batch. Rewards are `beta * logp`.

    Args:
        beta: Inverse temperature of the preference term.
        alpha: Weight of the chosen NLL (behaviour cloning) term.
    """

    needs_reference = False

    def __init__(self, beta: float = 0.1, alpha: float = 1.0) -> None:
        self.beta = beta
        self.alpha = alpha

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        chosen_rewards, rejected_rewards = self.beta * logps.chosen, self.beta * logps.rejected  # [B], [B]
        preference = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
        nll = -(logps.chosen / logps.chosen_tokens).mean()
        metrics = _metrics(logps, chosen_rewards, rejected_rewards, nll=nll, preference=preference)
        return preference + self.alpha * nll, metrics


class Combined(PreferenceLoss):
    """Weighted sum of preference losses, e.g. DPO + SFT-style terms as in ms-swift's mixed `loss_type`.

    Metrics are prefixed by each loss's class name (`SigmoidDPO/rewards/margin`), with `_<index>`
    appended when a class appears more than once. Needs a reference if any part does.

    Args:
        losses: The losses to add up.
        weights: One weight per loss; all 1.0 when omitted.
    """

    def __init__(self, losses: list[PreferenceLoss], weights: list[float] | None = None) -> None:
        weights = [1.0] * len(losses) if weights is None else weights
        if len(weights) != len(losses):
            raise ValueError(f"Combined got {len(losses)} losses but {len(weights)} weights")
        counts = Counter(type(loss).__name__ for loss in losses)
        self.names = [
            type(loss).__name__ + (f"_{i}" if counts[type(loss).__name__] > 1 else "")
            for i, loss in enumerate(losses)
        ]
        self.losses = losses
        self.weights = weights
        self.needs_reference = any(loss.needs_reference for loss in losses)

    def __call__(self, logps: PairLogps) -> tuple[Tensor, dict[str, Tensor]]:
        total, metrics = 0.0, {}
        for name, loss_fn, weight in zip(self.names, self.losses, self.weights, strict=True):
            loss, parts = loss_fn(logps)
            total = total + weight * loss
            metrics |= {f"{name}/{key}": value for key, value in parts.items()}
            metrics[f"{name}/loss"] = loss.detach()
        return total, metrics
