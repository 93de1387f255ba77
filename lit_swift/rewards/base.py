"""The reward contract, named built-ins, user plugin files and the weighted, checked scoring of a rollout.

A reward function is any callable `fn(completions, **columns) -> list[float]` (ms-swift's ORM plugin
contract): `completions` are the decoded completion texts, and every extra column of the prompt rows
(e.g. `solution`) arrives as a keyword argument with one value per completion, next to `prompts`
(the rendered prompt texts), `completion_ids` and `finish_reasons`. Functions take `**kwargs` and use
what they need.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

RewardFn = Callable[..., Sequence[float]]


class Reward(ABC):
    """Base of the built-in rewards (any callable with the same contract works as well)."""

    @abstractmethod
    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        """One reward per completion."""


BUILTINS = {
    "accuracy": "lit_swift.rewards.verifiable.MathAccuracy",
    "exact_match": "lit_swift.rewards.verifiable.ExactMatch",
    "reasoning_gym": "lit_swift.rewards.verifiable.ReasoningGymScore",
    "format": "lit_swift.rewards.shaping.Format",
    "cosine": "lit_swift.rewards.shaping.CosineLength",
    "repetition": "lit_swift.rewards.shaping.Repetition",
    "soft_overlong": "lit_swift.rewards.shaping.SoftOverlong",
}
"""Reward names usable as strings in `rewards:` (each the dotted path of its class, built with defaults)."""


def reward_name(fn: RewardFn) -> str:
    """How logs and errors name a reward: its class or function name."""
    return getattr(fn, "__name__", type(fn).__name__)


def load_reward(spec: str) -> RewardFn:
    """A reward from a string: a built-in name, `file.py:attr` (a user file, no packaging needed) or a
    dotted `package.module.attr`. A class found this way is built with no arguments."""
    if spec in BUILTINS:
        spec = BUILTINS[spec]
    if ".py:" in spec:
        path, attr = spec.rsplit(":", 1)
        obj = getattr(_import_file(Path(path)), attr, None)
        where = f"{path}"
    else:
        module, _, attr = spec.rpartition(".")
        if not module:
            raise ValueError(
                f"unknown reward {spec!r}: use a built-in ({', '.join(BUILTINS)}), 'file.py:name' or "
                "'package.module.name'"
            )
        obj = getattr(importlib.import_module(module), attr, None)
        where = module
    if obj is None:
        raise ValueError(f"reward {spec!r}: {where} has no attribute {attr!r}")
    fn = obj() if inspect.isclass(obj) else obj
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not callable")
    return fn


def _import_file(path: Path):
    if not path.is_file():
        raise ValueError(f"reward plugin file {path} does not exist")
    name = f"lit_swift_reward_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class RewardSet:
    """Reward functions with weights; `score` calls each on a rollout and checks what it returns.

    Args:
        functions: rewards (instances or `load_reward` strings).
        weights: one weight per function (default 1 each); the total reward is the weighted sum.
    """

    def __init__(self, functions: Sequence[RewardFn | str], weights: Sequence[float] | None = None):
        if not functions:
            raise ValueError("GRPO needs at least one reward function (`rewards:`)")
        self.functions = [load_reward(f) if isinstance(f, str) else f for f in functions]
        self.weights = list(weights) if weights is not None else [1.0] * len(self.functions)
        if len(self.weights) != len(self.functions):
            raise ValueError(
                f"reward_weights has {len(self.weights)} entries for {len(self.functions)} reward functions"
            )
        names = [reward_name(f) for f in self.functions]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]

    def score(self, completions: list[str], columns: dict[str, list]) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted total reward [N] and each function's raw rewards [N], by name.

        Raises:
            RuntimeError: naming the function, if one raises, returns the wrong number of values, or
                returns a value that is not a finite number.
        """
        per_function = {}
        for name, fn in zip(self.names, self.functions, strict=True):
            try:
                values = fn(completions, **columns)
            except Exception as error:
                raise RuntimeError(
                    f"reward function {name!r} raised {type(error).__name__}: {error}"
                ) from error
            per_function[name] = _check(name, values, len(completions))
        total = sum(w * per_function[n] for n, w in zip(self.names, self.weights, strict=True))
        return total, per_function


def _check(name: str, values: Any, n: int) -> Tensor:
    try:
        values = list(values)
    except TypeError:
        raise RuntimeError(
            f"reward function {name!r} returned {type(values).__name__}, not a list of floats"
        ) from None
    if len(values) != n:
        raise RuntimeError(f"reward function {name!r} returned {len(values)} rewards for {n} completions")
    bad = [(i, v) for i, v in enumerate(values) if not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        i, v = bad[0]
        raise RuntimeError(
            f"reward function {name!r} returned {v!r} for completion {i} ({len(bad)} bad value(s)): rewards must "
            "be finite numbers (NaN is an error, not a zero)"
        )
    return torch.tensor([float(v) for v in values])
