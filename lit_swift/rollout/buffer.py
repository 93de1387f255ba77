"""The rollout buffer between generation and the optimizer steps, and the sample-completions table."""

from __future__ import annotations

import csv
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_swift.rollout.engine import Completion

COLUMNS = ["step", "prompt", "completion", "reward"]


class Rollout:
    """P prompt groups of G completions: token ids, rollout log-probs, rewards and advantages."""

    def __init__(self, prompts: list[list[int]], completions: list[Completion], advantages: Tensor):
        self.prompts, self.completions, self.advantages = prompts, completions, advantages  # [P*G]

    def take(self, index: list[int]) -> Rollout:
        """The completions at `index` (positions in the flat P*G order)."""
        c = [self.completions[i] for i in index]
        return Rollout([self.prompts[i] for i in index], c, self.advantages[index])

    def state(self) -> dict[str, Any]:
        """Plain containers only (checkpoint-safe)."""
        comps = [(c.token_ids, c.logprobs, c.finish_reason) for c in self.completions]
        return {"prompts": self.prompts, "completions": comps, "advantages": self.advantages.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Rollout:
        comps = [Completion(t, lp, f) for t, lp, f in state["completions"]]
        return cls(state["prompts"], comps, torch.tensor(state["advantages"]))

    @staticmethod
    def cat(parts: list[Rollout]) -> Rollout:
        return Rollout(
            [p for r in parts for p in r.prompts],
            [c for r in parts for c in r.completions],
            torch.cat([r.advantages for r in parts]) if parts else torch.zeros(0),
        )


class InFlight:
    """A prompt batch sent to an asynchronous engine: what scoring needs of it, and its future rollouts.

    `sent` holds plain lists only (`prompts` flat and prompt-major, `row_ids`, `extra`, `step_num_rows`),
    so `state()` (which waits for the completions) can go into a checkpoint.
    """

    def __init__(self, batch: dict[str, Any], prompts: list[list[int]], future: Future):
        self.sent = {
            "prompts": prompts,
            "row_ids": [int(r) for r in batch["row_ids"]],
            "extra": list(batch["extra"]),
            "step_num_rows": int(batch["step_num_rows"]),
        }
        self.future = future

    def result(self) -> tuple[dict[str, Any], tuple[list[list[int]], list[Completion]]]:
        """The batch as sent and (prompts, completions), waiting for the engine if it still generates."""
        return self.sent, (self.sent["prompts"], self.future.result())

    def state(self) -> dict[str, Any]:
        comps = [(c.token_ids, c.logprobs, c.finish_reason) for c in self.future.result()]
        return {**self.sent, "completions": comps}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> InFlight:
        future: Future = Future()
        future.set_result([Completion(t, lp, f) for t, lp, f in state["completions"]])
        return cls(state, state["prompts"], future)


def write_completions(path: Path, rows: list[tuple], loggers: list, step: int) -> None:
    """Append `(step, prompt, completion, reward)` rows to a CSV file and to W&B / TensorBoard tables."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(COLUMNS)
        writer.writerows(rows)
    for logger in loggers:
        if hasattr(logger, "log_text"):  # W&B
            logger.log_text(key="completions", columns=COLUMNS, data=[list(r) for r in rows])
        elif hasattr(getattr(logger, "experiment", None), "add_text"):  # TensorBoard
            lines = [f"| {s} | {p[-80:]!r} | {t!r} | {r:.3f} |" for s, p, t, r in rows]
            header = "| step | prompt | completion | reward |\n|---|---|---|---|\n"
            logger.experiment.add_text("completions", header + "\n".join(lines), step)


def rollout_stats(completions: list[Completion], rewards: Tensor, per_function: dict[str, Tensor]) -> dict:
    """Reward (mean, mean within-group std, per function), zero-spread groups, lengths, truncation and
    the sampling entropy (when the engine reports it) of one rollout; `rewards` is [P, G]."""
    lengths = torch.tensor([float(len(c.token_ids)) for c in completions])
    truncated = torch.tensor([c.finish_reason == "length" for c in completions], dtype=torch.float)
    stats = {
        "reward": rewards.mean(),
        "reward_std": rewards.std(-1).mean(),
        "frac_zero_std_groups": (rewards.max(-1).values == rewards.min(-1).values).float().mean(),
        "completions/mean_length": lengths.mean(),
        "completions/min_length": lengths.min(),
        "completions/max_length": lengths.max(),
        "completions/clipped_ratio": truncated.mean(),
        **{f"rewards/{k}": v.mean() for k, v in per_function.items()},
    }
    entropies = [c.extra["entropy"] for c in completions if "entropy" in c.extra]
    if entropies:
        stats["entropy"] = torch.tensor(entropies).mean()
    return {k: float(v) for k, v in stats.items()}


def gather_groups(module, rewards: Tensor) -> tuple[Tensor, int]:
    """Every rank's reward groups in rank order (ranks may hold different counts) and where this rank's
    start. `module` is the LightningModule (its `all_gather`). # [sum P, G]"""
    sizes = module.all_gather(torch.tensor(rewards.shape[0], device=module.device)).tolist()
    padded = rewards.new_full((max(sizes), rewards.shape[1]), float("nan"))
    padded[: rewards.shape[0]] = rewards
    gathered = module.all_gather(padded.to(module.device)).cpu()  # [W, max P, G]
    everything = torch.cat([gathered[r, : sizes[r]] for r in range(len(sizes))])
    return everything, sum(sizes[: module.global_rank])
