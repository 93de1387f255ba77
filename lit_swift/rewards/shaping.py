"""Shaping rewards: output format, length (cosine), n-gram repetition and DAPO's soft overlong punishment."""

from __future__ import annotations

import math
import re
from typing import Any

from lit_swift.rewards.base import Reward
from lit_swift.rewards.verifiable import MathAccuracy


class Format(Reward):
    """1.0 when the completion matches `pattern` (whole text), else 0.0.

    Args:
        pattern: a regular expression (DOTALL); default `<think>...</think><answer>...</answer>`.
    """

    def __init__(self, pattern: str = r"<think>.*?</think>\s*<answer>.*?</answer>"):
        self.pattern = re.compile(pattern, re.DOTALL)

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        return [float(self.pattern.fullmatch(c.strip()) is not None) for c in completions]


class CosineLength(Reward):
    """Correctness scaled by length along a cosine (Yeo et al. 2025, "Demystifying long chain-of-thought
    reasoning", arXiv:2502.03373): correct answers earn more when short, wrong ones lose less when long.

    r(L) = v_max + (v_min - v_max) (1 + cos(pi L / max_length)) / 2, with (v_min, v_max) the values at
    length 0 and at `max_length` for correct and for wrong answers; lengths in completion tokens.

    Args:
        max_length: the length at which the value reaches its end point.
        correct: (value at length 0, value at max_length) for a correct answer.
        wrong: the same for a wrong answer.
        column: the row column with the reference answer (checked by `MathAccuracy`).
    """

    def __init__(
        self,
        max_length: int = 1024,
        correct: tuple[float, float] = (1.0, 0.5),
        wrong: tuple[float, float] = (-0.5, 0.0),
        column: str = "solution",
    ):
        self.max_length, self.correct, self.wrong = max_length, correct, wrong
        self.accuracy = MathAccuracy(column)

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        right = self.accuracy(completions, **kwargs)
        out = []
        for ok, ids in zip(right, kwargs["completion_ids"], strict=True):
            v_min, v_max = self.correct if ok else self.wrong
            progress = min(len(ids), self.max_length) / self.max_length
            out.append(v_max + (v_min - v_max) * (1 + math.cos(math.pi * progress)) / 2)
        return out


class Repetition(Reward):
    """max_penalty x (1 - distinct n-grams / n-grams) over the completion's words (Yeo et al. 2025).

    Args:
        n: n-gram size.
        max_penalty: the reward of a completion made of one repeated n-gram (<= 0).
    """

    def __init__(self, n: int = 3, max_penalty: float = -1.0):
        self.n, self.max_penalty = n, max_penalty

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        out = []
        for text in completions:
            words = text.split()
            grams = [tuple(words[i : i + self.n]) for i in range(len(words) - self.n + 1)]
            out.append(0.0 if not grams else self.max_penalty * (1 - len(set(grams)) / len(grams)))
        return out


class SoftOverlong(Reward):
    """DAPO's soft overlong punishment (Yu et al. 2025): 0 up to `max_length - cache_length` tokens, then
    linearly down to -1 at `max_length`, and -1 beyond.

    Args:
        max_length: the completion budget (usually the objective's `max_completion_length`).
        cache_length: the length of the linear punishment zone before it.
    """

    def __init__(self, max_length: int = 1024, cache_length: int = 256):
        if not 0 < cache_length <= max_length:
            raise ValueError(
                f"SoftOverlong needs 0 < cache_length <= max_length, got {cache_length}, {max_length}"
            )
        self.max_length, self.cache_length = max_length, cache_length

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        start = self.max_length - self.cache_length
        out = []
        for ids in kwargs["completion_ids"]:
            n = len(ids)
            out.append(
                0.0 if n <= start else -1.0 if n > self.max_length else (start - n) / self.cache_length
            )
        return out
