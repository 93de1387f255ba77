"""The epoch plan: which samples form each micro-batch, on which rank, in which optimizer step.

Planning the whole epoch up front (seeded by `seed + epoch`) gives three properties at once: every
micro-batch knows the target-token count of its entire optimizer step (exact loss normalisation
under accumulation and DDP), each rank gets a disjoint share, and resuming skips exactly the
micro-batches already consumed. `step_shares` lays out the steps for this plan and for the streaming
plan (`stream.py`) alike; `PlannedDataModule` (`base.py`) serves both.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Sampler

from lit_swift.data.encode_cache import EncodeCache

U = TypeVar("U")


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
        batches = batched((self.rows[i] for i in order), self.batch_size)
        dropped: list[int] = []
        shares = step_shares(
            batches, self._weight, self.accumulate, self.world_size, self.rank, dropped.append
        )
        mine = [MicroBatch(mb, total) for mb, total in shares]
        self.num_dropped = sum(dropped)
        return mine

    def _weight(self, row: tuple[int, ...]) -> int:
        return sum(self.targets[i] for i in row)

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


def batched(items: Iterable[U], n: int) -> Iterator[tuple[U, ...]]:
    """Consecutive tuples of `n` items, the last one possibly shorter (`itertools.batched`, Python 3.12)."""
    it = iter(items)
    while chunk := tuple(itertools.islice(it, n)):
        yield chunk


def step_shares(
    batches: Iterable[tuple[U, ...]],
    weight: Callable[[U], int],
    accumulate: int,
    world_size: int,
    rank: int,
    on_drop: Callable[[int], None] = lambda num: None,
) -> Iterator[tuple[tuple[U, ...], int]]:
    """This rank's micro-batches, each with the total `weight` of its whole optimizer step.

    Consecutive micro-batches form steps of `accumulate * world_size`; rank r takes micro-batches
    `r * accumulate .. (r + 1) * accumulate - 1` of every step. With several ranks a ragged last step
    is left out (its micro-batch count goes to `on_drop`), as ranks must run equally many batches.
    Shared by the map-style plan and the streaming plan, so both lay out steps identically.
    """
    group = accumulate * world_size
    for step in batched(batches, group):
        if len(step) < group and world_size > 1:
            on_drop(len(step))
            return
        total = sum(weight(unit) for mb in step for unit in mb)
        for mb in step[rank * accumulate : (rank + 1) * accumulate]:
            yield mb, total


class Encoded(NamedTuple):
    """What one canonical row became: zero or more served items, and a note if it was cut or dropped.

    The note completes ``"{split}: {count} ..."`` in the log, e.g. ``"prompt(s) longer than 64 tokens,
    truncation=left"``; rows with equal notes are counted together.
    """

    items: list
    note: str | None = None


def encode_all(
    rows: list[tuple], encode: Callable[..., Encoded], split: str, cache: EncodeCache | None = None
) -> list:
    """Every row's items in order (`encode(*row)` for each row), logging how many rows each note covers.

    With a `cache`, a split encoded before from equal rows by an equal encoder is read back (its notes
    logged as if encoded now), and a new encoding is stored; an encoding error stores nothing.
    """
    path = cache.path(rows, split) if cache is not None and rows else None
    cached = cache.load(path) if path is not None else None
    if cached is not None:
        items, notes = cached
        rank_zero_info(f"{split}: {len(rows)} rows encoded by an earlier run, read from {path}")
        log_notes(notes, split)
        return items
    items = []
    notes: Counter[str] = Counter()
    for row in rows:
        out = encode(*row)
        items += out.items
        if out.note:
            notes[out.note] += 1
    log_notes(notes, split)
    if path is not None:
        cache.store(path, items, notes)
    return items


def log_notes(notes: Counter[str], split: str) -> None:
    for note, count in notes.items():
        rank_zero_info(f"{split}: {count} {note}")


def check_trainer(trainer: L.Trainer, streaming: bool = False) -> None:
    """Refuse a trainer that would replace the planned sampler, or never end a streamed run.

    Raises:
        ValueError: if `use_distributed_sampler` is on with more than one process, or if `streaming`
            and `max_steps` is unset (an epoch's length is unknown until the stream ends, so
            Lightning cannot size the LR schedule).
    """
    if trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
        raise ValueError(
            "trainer.use_distributed_sampler must be False with world_size > 1: the DataModule plans each "
            "rank's micro-batches itself (exact loss normalisation and resume) and Lightning's "
            "DistributedSampler would replace that plan. Set `trainer: {use_distributed_sampler: false}` "
            "(the lit-swift CLI default)."
        )
    if streaming and trainer.max_steps < 0:
        raise ValueError(
            "streaming: true reads the data lazily, so the number of batches is unknown before the run: "
            "set trainer.max_steps (the length of the LR schedule; the run still stops after max_epochs "
            "passes if the stream runs out first)"
        )


def identity(batch: Any) -> Any:
    """The collate_fn of loaders whose items are already batches."""
    return batch
