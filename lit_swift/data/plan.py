"""The epoch plan: which samples form each micro-batch, on which rank, in which optimizer step.

Planning the whole epoch up front (seeded by `seed + epoch`) gives three properties at once: every
micro-batch knows the target-token count of its entire optimizer step (exact loss normalisation
under accumulation and DDP), each rank gets a disjoint share, and resuming skips exactly the
micro-batches already consumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from torch.utils.data import Sampler


@dataclass(frozen=True)
class MicroBatch:
    """Rows of sample indices (one index per row when padding, several when packed)."""

    rows: tuple[tuple[int, ...], ...]
    step_target_tokens: int


class EpochPlanSampler(Sampler[MicroBatch]):
    """Yields this rank's `MicroBatch`es for the current epoch, skipping those consumed before a resume.

    Args:
        rows: packing units (tuples of sample indices), planned once.
        targets: target-token count of each sample.
        batch_size: rows per micro-batch.
        shuffle: reshuffle the rows every epoch with `seed + epoch`.
        seed: base of the per-epoch shuffle seed.
        accumulate: micro-batches per optimizer step on each rank.
        world_size, rank: data-parallel layout.
    """

    def __init__(
        self,
        rows: list[tuple[int, ...]],
        targets: list[int],
        batch_size: int,
        shuffle: bool,
        seed: int,
        accumulate: int = 1,
        world_size: int = 1,
        rank: int = 0,
    ):
        self.rows, self.targets, self.batch_size = rows, targets, batch_size
        self.shuffle, self.seed, self.accumulate = shuffle, seed, accumulate
        self.world_size, self.rank = world_size, rank
        self.epoch, self.skip_epoch, self.skip = 0, -1, 0
        self.num_dropped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """On the next pass over `epoch`, skip its first `batches_done` micro-batches."""
        self.skip_epoch, self.skip = epoch, batches_done

    def plan(self, epoch: int) -> list[MicroBatch]:
        order = list(range(len(self.rows)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        batches = [
            tuple(self.rows[i] for i in order[s : s + self.batch_size])
            for s in range(0, len(order), self.batch_size)
        ]
        group = self.accumulate * self.world_size
        mine: list[MicroBatch] = []
        self.num_dropped = 0
        for start in range(0, len(batches), group):
            step = batches[start : start + group]
            if len(step) < group and self.world_size > 1:
                self.num_dropped = len(step)  # ranks must see equal counts; the ragged tail is left out
                break
            tokens = sum(self.targets[i] for mb in step for row in mb for i in row)
            share = step[self.rank * self.accumulate : (self.rank + 1) * self.accumulate]
            mine += [MicroBatch(mb, tokens) for mb in share]
        return mine

    def __iter__(self) -> Iterator[MicroBatch]:
        # A generator: the plan is made at the first `next()`, not at `iter()`. Lightning creates the
        # train iterator in `setup_data` *before* it calls `set_epoch`, so an eager plan would use the
        # previous epoch's order when resuming in epoch > 0.
        plan = self.plan(self.epoch)
        start = self.skip if self.epoch == self.skip_epoch else 0
        self.skip_epoch = -1
        yield from plan[start:]

    def __len__(self) -> int:
        return len(self.plan(self.epoch))
