"""The epoch plan: which samples form each micro-batch, on which rank, in which optimizer step.

Planning the whole epoch up front (seeded by `seed + epoch`) gives three properties at once: every
micro-batch knows the target-token count of its entire optimizer step (exact loss normalisation
under accumulation and DDP), each rank gets a disjoint share, and resuming skips exactly the
micro-batches already consumed.

`PlannedDataModule` is the one base of the DataModules: it reads and splits the rows, serves them
through this plan, and keeps the resume state.
"""

from __future__ import annotations

import abc
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_swift import models
from lit_swift.data import sources


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


class PlannedDataModule(L.LightningDataModule, abc.ABC):
    """What every lit-swift DataModule shares: reading and splitting rows, planned loaders, resume state.

    A subclass names its canonical row `kind` (see `sources.load_mixture`), turns the training and
    validation rows into its own items in `_prepare`, and serves them through `_planned_loader`. The
    arguments are documented on each concrete DataModule, whose signature is the CLI schema.
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
    ):
        super().__init__()
        self.tokenizer_spec = tokenizer
        self.dataset = [dataset] if isinstance(dataset, str) else list(dataset)
        self.val_dataset = [val_dataset] if isinstance(val_dataset, str) else val_dataset
        self.val_split, self.columns = val_split, columns
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.shuffle, self.seed, self.num_workers, self.on_bad_row = shuffle, seed, num_workers, on_bad_row
        self.tokenizer: Any = None
        self._ready = False
        self._resume: tuple[int, int] | None = None

    # ----- stages -----
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return  # Lightning calls setup once per stage; the data is read once
        self.tokenizer = models.load_tokenizer(self.tokenizer_spec)
        train = self._read(self.dataset)
        if self.val_dataset:
            val = self._read(self.val_dataset)
        else:
            train, val = sources.split_validation(train, self.val_split, self.seed)
        self._prepare(train, val)
        self._ready = True

    @abc.abstractmethod
    def _prepare(self, train: list, val: list) -> None:
        """Turn the training and validation rows (as `_read` returns them) into the served items."""

    def _specs(self, paths: list[str]) -> list[sources.DatasetSpec]:
        return [sources.DatasetSpec(p, columns=self.columns) for p in paths]

    def _read(self, paths: list[str]) -> list[tuple[Any, Any]]:
        rows, report = sources.load_mixture(
            self._specs(paths), self.kind, on_bad_row=self.on_bad_row, seed=self.seed
        )
        if report.num_skipped:
            rank_zero_info(report.summary())
        return rows

    # ----- loaders -----
    def _planned_loader(
        self, dataset: Dataset, units: list[tuple[int, ...]], targets: list[int], batch_size: int, train: bool
    ) -> DataLoader:
        """A DataLoader of `dataset[MicroBatch]` items, planned by `EpochPlanSampler` over `units`.

        Training batches are grouped into optimizer steps of `accumulate_grad_batches` and sharded over
        the ranks, and resume where the checkpoint left off; validation batches are sharded unless
        `shard_validation` is False.
        """
        trainer = self.trainer
        if trainer is not None:
            check_trainer(trainer)
        shard = trainer and (train or self.shard_validation)
        sampler = EpochPlanSampler(
            units,
            targets,
            batch_size,
            shuffle=self.shuffle and train,
            seed=self.seed,
            accumulate=trainer.accumulate_grad_batches if (trainer and train) else 1,
            world_size=trainer.world_size if shard else 1,
            rank=trainer.global_rank if shard else 0,
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
            collate_fn=_identity,
            generator=generator,
        )

    # ----- exact resume -----
    def state_dict(self) -> dict[str, Any]:
        loop = self.trainer.fit_loop
        return {
            "epoch": self.trainer.current_epoch,
            "batches_done": loop.epoch_loop.batch_progress.current.processed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (state["epoch"], state["batches_done"])
        # Lightning warns that a mid-epoch resume of a non-stateful DataLoader is unreliable; the
        # sampler's `resume_at` makes ours exact, so the warning would only mislead.
        warnings.filterwarnings(
            "ignore", message="You're resuming from a checkpoint that ended before the epoch"
        )


def check_trainer(trainer: L.Trainer) -> None:
    """Refuse a trainer that would replace the planned sampler with Lightning's DistributedSampler.

    Raises:
        ValueError: if `use_distributed_sampler` is on with more than one process.
    """
    if trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
        raise ValueError(
            "trainer.use_distributed_sampler must be False with world_size > 1: the DataModule plans each "
            "rank's micro-batches itself (exact loss normalisation and resume) and Lightning's "
            "DistributedSampler would replace that plan. Set `trainer: {use_distributed_sampler: false}` "
            "(the lit-swift CLI default)."
        )


def _identity(batch: Any) -> Any:
    return batch
