"""Learning-rate schedules chosen by `class_path`: warmup then cosine, linear or constant."""

from __future__ import annotations

import math

import torch


class Schedule:
    """Warmup for `warmup_ratio` of the total steps (or `warmup_steps`), then `decay(progress)`.

    Args:
        warmup_ratio: fraction of the optimizer steps spent warming up linearly from 0.
        warmup_steps: absolute warmup steps; overrides `warmup_ratio` when set.
        min_lr_ratio: the factor the learning rate decays to at the end.
    """

    def __init__(self, warmup_ratio: float = 0.0, warmup_steps: int | None = None, min_lr_ratio: float = 0.0):
        self.warmup_ratio, self.warmup_steps, self.min_lr_ratio = warmup_ratio, warmup_steps, min_lr_ratio

    def decay(self, progress: float) -> float:
        return 1.0

    def factor(self, step: int, total_steps: int) -> float:
        warmup = self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * total_steps)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * self.decay(progress)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.factor(step, total_steps))


class Constant(Schedule):
    """Constant learning rate after warmup."""


class Cosine(Schedule):
    """Half-cosine decay from the peak to `min_lr_ratio` times it."""

    def decay(self, progress: float) -> float:
        return 0.5 * (1 + math.cos(math.pi * progress))


class Linear(Schedule):
    """Linear decay from the peak to `min_lr_ratio` times it."""

    def decay(self, progress: float) -> float:
        return 1 - progress
