"""Streaming: rows are read, encoded, packed, shuffled and planned lazily, so memory stays flat.

Every rank runs the same deterministic pipeline over the whole stream and keeps its share of each
optimizer step (`plan.step_shares`, as the map-style plan does), so ranks agree on batch counts and
step totals without talking to each other. DataLoader workers split the encoding by record index;
the shuffle buffer, the plan and collation run in the main process, in stream order, which makes the
batches independent of `num_workers` and lets a resumed run replay the stream to the exact batch.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lit_swift.data import sources
from lit_swift.data.plan import Encoded, batched, identity, log_notes, step_shares
from lit_swift.data.rows import RowKind
from lit_swift.data.sources import BadRecord, DatasetSpec, LoadReport, Provenance

Unit = tuple[tuple[int, Any], ...]
"""A planning unit: (row id, item) pairs served together (one pair, or a packed row of them)."""
NUM_POSITIONS = 64
"""How many recent batch positions a `StreamLoader` remembers for `rows_read_at` (Lightning reads ahead)."""


class StreamRecord(NamedTuple):
    """One record of the stream after a worker saw it: its items, or why it is bad."""

    index: int
    where: Provenance
    outcome: Encoded | BadRecord


class RowStream(IterableDataset):
    """Every record of `specs` in order as a `StreamRecord`; worker w of W handles records i = w (mod W).

    Each worker reads (parses) every record but normalises and encodes only its own, so encoding (the
    costly part) is split. A DataLoader hands out the workers' items round robin, which is stream
    order again.

    Args:
        specs: the datasets, read one after another (`path#N` takes the first N rows).
        kind: the canonical row kind.
        encode: `(row, "file:line", raw record) -> Encoded`; runs in the worker processes.
    """

    def __init__(self, specs: list[DatasetSpec], kind: RowKind, encode: Callable[[Any, str, dict], Encoded]):
        self.specs, self.kind, self.encode = specs, kind, encode

    def __iter__(self) -> Iterator[StreamRecord]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        records = itertools.chain.from_iterable(
            ((spec, item) for item in sources.iter_records(spec)) for spec in self.specs
        )
        for index, (spec, item) in enumerate(records):
            if index % num_workers == worker:
                yield self._record(index, spec, item)

    def _record(self, index: int, spec: DatasetSpec, item: sources.RawRow | BadRecord) -> StreamRecord:
        result = sources.normalise(item, self.kind, spec.columns)
        if isinstance(result, BadRecord):
            return StreamRecord(index, result.where, result)
        row, where = result
        return StreamRecord(index, where, self.encode(row, str(where), item.data))


@dataclass
class StreamPlan:
    """How a `StreamLoader` turns encoded items into this rank's batches.

    Args:
        units: (row id, item) pairs -> planning units (one pair each, or packed rows).
        weight: a unit's share of the step total each batch carries.
        collate: (units of one micro-batch, step total) -> batch.
        batch_size: units per micro-batch.
        shuffle_buffer: units in the seeded shuffle buffer (`seed + epoch`); 0 keeps stream order.
        seed: base of the per-epoch shuffle seed.
        accumulate, world_size, rank: the optimizer-step layout (see `plan.step_shares`).
        on_bad_row: `raise` at the first bad record (`file:line: reason`) or `skip` and count it.
    """

    units: Callable[[Iterator[tuple[int, Any]]], Iterator[Unit]]
    weight: Callable[[Unit], int]
    collate: Callable[[list[Unit], int], dict[str, Any]]
    batch_size: int
    shuffle_buffer: int = 0
    seed: int = 42
    accumulate: int = 1
    world_size: int = 1
    rank: int = 0
    on_bad_row: Literal["raise", "skip"] = "raise"


@dataclass
class PassReport:
    """What one pass over the stream skipped, cut or dropped; logged when the pass ends."""

    epoch: int
    rows: LoadReport
    notes: Counter[str] = field(default_factory=Counter)
    num_dropped: int = 0
    """Micro-batches of a ragged last step left out (several ranks only)."""
    logged: bool = False

    def drop(self, num_micro_batches: int) -> None:
        self.num_dropped += num_micro_batches

    def log(self, partial: bool = False) -> None:
        """Log the counts once (rank 0); `partial` when the run ends before the pass does."""
        if self.logged:
            return
        self.logged = True
        split = f"train stream, epoch {self.epoch}" + (" (run ended mid-pass)" if partial else "")
        rank_zero_info(f"{split}: {self.rows.summary()}")
        log_notes(self.notes, split)
        if self.num_dropped:
            rank_zero_info(f"{split}: left out {self.num_dropped} micro-batch(es) of a ragged last step")


class StreamLoader:
    """This rank's collated micro-batches: one lazy pass over a `RowStream` per epoch.

    A pass runs the epoch of the last `set_epoch` (Lightning calls it on a loader's `sampler`, which
    here is the loader itself), or the one `resume_at` names. Memory is bounded by the shuffle buffer,
    the packing buffer, one optimizer step and the DataLoader's prefetch, whatever the file size.

    Args:
        rows: the record stream (encoded in `num_workers` DataLoader workers; 0: in this process).
        plan: how items become batches.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, rows: RowStream, plan: StreamPlan, num_workers: int = 0):
        self.rows, self.plan, self.num_workers = rows, plan, num_workers
        self.epoch, self.skip_epoch, self.skip, self.expected_rows = 0, -1, 0, None
        self.rows_read = 0
        """Records taken from the stream so far in the current pass."""
        self.report: PassReport | None = None
        self._positions: dict[int, int] = {}

    @property
    def sampler(self) -> StreamLoader:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int, rows_read: int | None = None) -> None:
        """Make the next pass run `epoch`, replaying its first `batches_done` micro-batches without serving them.

        The next pass runs `epoch` whatever `set_epoch` said: after a restore, Lightning starts it (to
        prefetch a batch of a loader without length) before it calls `set_epoch`. `rows_read` (from
        `rows_read_at` before the interruption) is checked once the replay is done.
        """
        self.skip_epoch, self.skip, self.expected_rows = epoch, batches_done, rows_read

    def rows_read_at(self, batches_done: int) -> int | None:
        """Records the stream had consumed when micro-batch `batches_done` was planned (None if unknown)."""
        return self._positions.get(batches_done)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        plan, resuming = self.plan, self.skip_epoch >= 0
        epoch, skip = (self.skip_epoch, self.skip) if resuming else (self.epoch, 0)
        self.skip_epoch, self.rows_read, self._positions = -1, 0, {0: 0}
        self.report = report = PassReport(epoch, LoadReport(kind=self.rows.kind))
        units = plan.units(self._items(report))
        if plan.shuffle_buffer > 0:
            units = shuffle_buffer(units, plan.shuffle_buffer, random.Random(plan.seed + epoch))
        batches = batched(units, plan.batch_size)
        shares = step_shares(batches, plan.weight, plan.accumulate, plan.world_size, plan.rank, report.drop)
        k = 0
        for k, (mb, total) in enumerate(shares, 1):
            self._remember(k)
            if k == skip:
                self._check_replay(k)
            if k > skip:
                yield plan.collate(list(mb), total)
        if report.rows.num_kept == 0 or (k == 0 and plan.world_size == 1 and not resuming):
            raise ValueError(self._empty_pass(report))
        if k < skip:
            rank_zero_warn(
                f"resuming the stream: epoch {epoch} has {k} batches, the checkpoint had done {skip}"
            )
        report.log()

    def _empty_pass(self, report: PassReport) -> str:
        """Why a pass served nothing, so a run never "trains" on an empty stream (forever, under max_steps)."""
        files = ", ".join(str(spec.path) for spec in self.rows.specs)
        if report.rows.num_kept:
            return f"{files}: no training sample is left after encoding (raise max_length or use truncation: right/left)"
        problems = f"; e.g. {report.rows.problems[0]}" if report.rows.problems else ""
        return (
            f"{files}: no training rows of kind {self.rows.kind!r} in the stream: {report.rows.reasons()}{problems} "
            "(give a file with rows, fix the rows or map columns with `columns`)"
        )

    def report_unfinished(self) -> None:
        """Log the counts of a pass the run left before its end (e.g. at `max_steps`)."""
        if self.report is not None:
            self.report.log(partial=True)

    def _items(self, report: PassReport) -> Iterator[tuple[int, Any]]:
        """(row id, item) pairs in stream order; bad records raise or are counted, notes are counted."""
        # Our own generator: creating the DataLoader iterator draws its base seed from it, and drawing from
        # torch's global RNG instead would shift the dropout stream between a run and its resume.
        generator = torch.Generator().manual_seed(self.plan.seed)
        loader = DataLoader(
            self.rows, batch_size=None, num_workers=self.num_workers, collate_fn=identity, generator=generator
        )
        for record in loader:
            self.rows_read += 1
            outcome = record.outcome
            if isinstance(outcome, BadRecord):
                if self.plan.on_bad_row == "raise":
                    raise ValueError(f"{outcome.where}: {outcome.reason}")
                report.rows.skip(outcome.where, outcome.reason, outcome.code)
                continue
            report.rows.keep(record.where.source)
            report.rows.num_rows += 1
            if outcome.note:
                report.notes[outcome.note] += 1
            for item in outcome.items:
                yield record.index, item

    def _remember(self, k: int) -> None:
        self._positions[k] = self.rows_read
        self._positions.pop(k - NUM_POSITIONS, None)

    def _check_replay(self, k: int) -> None:
        if self.expected_rows is not None and self.expected_rows != self.rows_read:
            rank_zero_warn(
                f"resuming the stream: reaching batch {k} took {self.rows_read} records, the checkpoint "
                f"recorded {self.expected_rows}; the data changed since, so batches differ from the first run"
            )


def shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """A seeded shuffle of a stream with `size` items in memory: each new item takes a random slot and
    that slot's previous item is yielded; the rest is shuffled at the end. Every item appears once."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer
