"""`PlannedDataModule`: the one base of the DataModules (reading, splitting, planned or streamed loaders,
exact resume state).

Map-style (default): every row is read and encoded in `setup`, and each epoch is planned up front by
`EpochPlanSampler`. Streaming (`streaming: true`): training rows are read, encoded and planned lazily
by a `StreamLoader` with the same step layout; validation files are still read in `setup`.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lit_swift import models
from lit_swift.data import sources
from lit_swift.data.encode_cache import EncodeCache
from lit_swift.data.plan import Encoded, EpochPlanSampler, check_trainer, identity
from lit_swift.data.stream import RowStream, StreamLoader, StreamPlan, Unit


class PlannedDataModule(L.LightningDataModule, abc.ABC):
    """What every lit-swift DataModule shares: reading and splitting rows, planned loaders, resume state.

    A subclass names its canonical row `kind` (see `sources.load_mixture`), encodes one row in
    `_encode_one`, collates planning units in `_collate_units`, turns the training and validation rows
    into its own items in `_prepare` (through `plan.encode_all` with `self._encode_cache`, which reuses
    an earlier run's encoding), and serves map-style training batches from `_train_loader` (through
    `_planned_loader`). The arguments are documented on each concrete DataModule, whose
    signature is the CLI schema.
    """

    kind: str
    shard_validation = True
    """Give each rank its own share of the validation batches (False: every rank sees them all)."""

    def __init__(
        self,
        tokenizer: str,
        dataset: str | list[str],
        val_dataset: str | list[str] | None,
        val_split: float,
        columns: dict[str, str] | None,
        batch_size: int,
        val_batch_size: int | None,
        shuffle: bool,
        seed: int,
        num_workers: int,
        on_bad_row: Literal["raise", "skip"],
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        encode_cache: bool = True,
    ):
        super().__init__()
        self.tokenizer_spec = tokenizer
        self.dataset = [dataset] if isinstance(dataset, str) else list(dataset)
        self.val_dataset = [val_dataset] if isinstance(val_dataset, str) else val_dataset
        self.val_split, self.columns = val_split, columns
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.shuffle, self.seed, self.num_workers, self.on_bad_row = shuffle, seed, num_workers, on_bad_row
        self.streaming, self.shuffle_buffer, self.encode_cache = streaming, shuffle_buffer, encode_cache
        self.tokenizer: Any = None
        self._encode_cache: EncodeCache | None = None
        self._ready = False
        self._resume: tuple[int, int] | None = None
        self._resume_rows: int | None = None
        self._stream: StreamLoader | None = None

    # ----- stages -----
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return  # Lightning calls setup once per stage; the data is read once
        self.tokenizer = models.load_tokenizer(self.tokenizer_spec)
        if self.encode_cache and not self.streaming:
            # fingerprinted before `_prepare`, which adds its own (non-setting) attributes
            self._encode_cache = EncodeCache.create(type(self), vars(self), self.tokenizer)
        train, val = self._streaming_rows() if self.streaming else self._rows()
        self._prepare(train, val)
        self._ready = True

    def _rows(self) -> tuple[list, list]:
        train = self._read(self.dataset)
        if self.val_dataset:
            return train, self._read(self.val_dataset, "validation")
        return sources.split_validation(train, self.val_split, self.seed)

    def _streaming_rows(self) -> tuple[list, list]:
        """No training row is read here (only the paths are checked); validation files are read whole."""
        if self.val_split:
            raise ValueError(
                f"val_split={self.val_split} needs every training row up front, which streaming: true never "
                "reads; give val_dataset instead (read into memory; `path#N` takes its first N rows)"
            )
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        for spec in self._specs(self.dataset):
            sources.iter_records(spec)  # raises now for a missing file or an unsupported type
        return [], self._read(self.val_dataset, "validation") if self.val_dataset else []

    @abc.abstractmethod
    def _prepare(self, train: list, val: list) -> None:
        """Turn the training and validation rows (as `_read` returns them) into the served items.

        With streaming, `train` is empty: build what `_encode_one` needs (the encoder) all the same.
        """

    @abc.abstractmethod
    def _encode_one(self, row: Any, where: str) -> Encoded:
        """One canonical row (from `where`, i.e. `file:line`) -> its served items and a cut/drop note."""

    @abc.abstractmethod
    def _collate_units(self, units: list[Unit], step_total: int) -> dict[str, Any]:
        """One micro-batch of units ((row id, item) pairs) -> the batch, carrying the step's total weight."""

    def teardown(self, stage: str) -> None:
        if self._stream is not None:
            self._stream.report_unfinished()

    def _specs(self, paths: list[str]) -> list[sources.DatasetSpec]:
        return [sources.DatasetSpec(p, columns=self.columns) for p in paths]

    def _read(self, paths: list[str], split: str = "training") -> list[tuple[Any, Any]]:
        """Every row of `paths`; a ValueError when none is left, so no run trains (or validates) on nothing."""
        rows, report = sources.load_mixture(
            self._specs(paths), self.kind, on_bad_row=self.on_bad_row, seed=self.seed
        )
        if report.num_skipped:
            rank_zero_info(report.summary())
        if not rows:
            if report.num_read == 0:
                fix = "the file has no rows; give a file that has some"
            else:
                fix = f"every row was skipped, e.g. {report.problems[0]}; fix the rows or map columns with `columns`"
            raise ValueError(
                f"{', '.join(paths)}: no {split} rows of kind {self.kind!r}: {report.reasons()} ({fix})"
            )
        return rows

    # ----- loaders -----
    def train_dataloader(self) -> DataLoader | StreamLoader:
        return self._stream_loader() if self.streaming else self._train_loader()

    @abc.abstractmethod
    def _train_loader(self) -> DataLoader:
        """The map-style training loader (see `_planned_loader`)."""

    def _layout(self, train: bool) -> tuple[int, int, int]:
        """(accumulate, world_size, rank) of the optimizer steps; 1, 1, 0 without a trainer."""
        trainer = self.trainer
        if trainer is None:
            return 1, 1, 0
        shard = train or self.shard_validation
        accumulate = trainer.accumulate_grad_batches if train else 1
        return accumulate, trainer.world_size if shard else 1, trainer.global_rank if shard else 0

    def _planned_loader(
        self, dataset: Dataset, units: list[tuple[int, ...]], targets: list[int], batch_size: int, train: bool
    ) -> DataLoader:
        """A DataLoader of `dataset[MicroBatch]` items, planned by `EpochPlanSampler` over `units`.

        Training batches are grouped into optimizer steps of `accumulate_grad_batches` and sharded over
        the ranks, and resume where the checkpoint left off; validation batches are sharded unless
        `shard_validation` is False.
        """
        if self.trainer is not None:
            check_trainer(self.trainer)
        if train and not units:
            raise ValueError(
                f"{', '.join(self.dataset)}: no training sample is left after encoding (every row was cut by "
                "the length policy; raise max_length or use truncation: right/left)"
            )
        accumulate, world_size, rank = self._layout(train)
        sampler = EpochPlanSampler(
            units, targets, batch_size, self.shuffle and train, self.seed, accumulate, world_size, rank
        )
        if train and self._resume is not None:
            sampler.resume_at(*self._resume)
        # Our own generator: creating a DataLoader iterator draws its base seed from it, and drawing from
        # torch's global RNG instead would shift the dropout stream between a run and its resume.
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=identity,
            generator=generator,
        )

    # ----- streaming -----
    def _stream_loader(self) -> StreamLoader:
        """The lazy training loader: rows encoded in workers, shuffled, packed and planned as they come."""
        if self.trainer is not None:
            check_trainer(self.trainer, streaming=True)
        accumulate, world_size, rank = self._layout(train=True)
        plan = StreamPlan(
            units=self._stream_units,
            weight=self._unit_weight,
            collate=self._collate_units,
            batch_size=self.batch_size,
            shuffle_buffer=self.shuffle_buffer if self.shuffle else 0,
            seed=self.seed,
            accumulate=accumulate,
            world_size=world_size,
            rank=rank,
            on_bad_row=self.on_bad_row,
        )
        self._stream = StreamLoader(
            RowStream(self._specs(self.dataset), self.kind, self._stream_encode), plan, self.num_workers
        )
        if self._resume is not None:
            self._stream.resume_at(*self._resume, rows_read=self._resume_rows)
        return self._stream

    def _stream_encode(self, row: Any, where: str, raw: dict[str, Any]) -> Encoded:
        """Encode one streamed row; `raw` is its record as read, for columns the canonical row drops."""
        return self._encode_one(row, where)

    def _stream_units(self, items: Iterator[tuple[int, Any]]) -> Iterator[Unit]:
        """Planning units of the stream: one (row id, item) pair each, unless a subclass packs them."""
        return ((item,) for item in items)

    def _unit_weight(self, unit: Unit) -> int:
        """A unit's share of its step's total (`step_num_rows` by default: one per row)."""
        return len(unit)

    # ----- exact resume -----
    def state_dict(self) -> dict[str, Any]:
        # Where Lightning continues from this checkpoint: a save at the end of an epoch or of training
        # resumes at the start of the next epoch, not at "all batches of this one done".
        epoch, batches_done = self._resume_point()
        state = {"epoch": epoch, "batches_done": batches_done}
        if self.streaming:
            rows_read = self._stream.rows_read_at(batches_done) if self._stream else None
            state["stream"] = {
                "seed": self.seed,
                "epoch": epoch,
                "batches_done": batches_done,
                "rows_read": rows_read,
            }
        return state

    def _forget_finished_epoch_batches(self) -> None:
        """Workaround for Lightning 2.6: resuming from a checkpoint saved after an epoch ended.

        Such a checkpoint (`every_n_epochs`, or the `last` written at train end) keeps the finished
        epoch's batch counters, and Lightning restores them into the next epoch: its data fetcher then
        counts them as already fetched (`fetched += batch_progress.current.ready`) and ends that epoch
        after one batch. When the saved epoch had finished, zero those counters in the checkpoint being
        restored (the DataModule is restored before the loops, so the loops read the zeros).
        """
        loaded = getattr(getattr(self.trainer, "_checkpoint_connector", None), "_loaded_checkpoint", None)
        fit = ((loaded or {}).get("loops") or {}).get("fit_loop") or {}
        epoch, batches = fit.get("epoch_progress", {}).get("current"), fit.get("epoch_loop.batch_progress")
        if not epoch or not batches or epoch["completed"] != epoch["ready"]:
            return  # mid-epoch (or on an epoch's last batch, which Lightning handles itself)
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False

    def _running(self) -> bool:
        progress = self.trainer.fit_loop.epoch_progress.current
        return progress.started > progress.processed

    def _batches_done(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _resume_point(self) -> tuple[int, int]:
        """(epoch, micro-batches of it done) where Lightning continues from a checkpoint saved now.

        Mid-epoch that is the running epoch; at its last batch, at its end or at the end of training it
        is the start of the next one. A stream needs it up front: after a restore Lightning starts the
        first pass (to prefetch from a loader without length) before it calls `set_epoch`.
        """
        epoch = self.trainer.fit_loop.epoch_progress.current.processed  # one more once the epoch ended
        if not self._running():
            return epoch, 0
        if self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return epoch + 1, 0
        return epoch, self._batches_done()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (state["epoch"], state["batches_done"])
        self._forget_finished_epoch_batches()
        stream = state.get("stream")
        if self.streaming and stream is not None:
            if stream["seed"] != self.seed:
                raise ValueError(
                    f"the checkpoint streamed its data with seed {stream['seed']}, this run has seed "
                    f"{self.seed}: the stream order would differ, so the resume could not be exact"
                )
            self._resume, self._resume_rows = (stream["epoch"], stream["batches_done"]), stream["rows_read"]
        # Lightning warns that a mid-epoch resume of a non-stateful DataLoader is unreliable; the
        # sampler's `resume_at` makes ours exact, so the warning would only mislead.
        warnings.filterwarnings(
            "ignore", message="You're resuming from a checkpoint that ended before the epoch"
        )
