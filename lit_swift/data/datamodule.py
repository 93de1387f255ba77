"""LightningDataModules wiring the data stages; their plan state makes mid-epoch resume exact.

`SFTDataModule` reads chat rows (SFT) or plain text (CPT), encodes them with a chat template,
applies the length policy, optionally bin-packs them, and serves micro-batches planned per epoch
by `EpochPlanSampler` (or, streaming, as they come) through their shared base `PlannedDataModule`
(see `base.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lit_swift.data import collate, packing
from lit_swift.data.base import PlannedDataModule
from lit_swift.data.plan import Encoded, MicroBatch, encode_all
from lit_swift.data.stream import Unit
from lit_swift.data.template import ChatEncoder, LossOn, Truncation, check_labels, truncate
from lit_swift.types import IGNORE_INDEX, ChatRow, EncodedSample, TextRow


def num_targets(sample: EncodedSample) -> int:
    """Tokens that carry a next-token target (the first label can never be predicted)."""
    return sum(1 for x in sample.labels[1:] if x != IGNORE_INDEX)


def collate_samples(
    rows: list[list[EncodedSample]], pad_id: int, packed: bool, step_target_tokens: int
) -> dict[str, Any]:
    """A packed batch (one row per bin) or a padded one (one sample per row), with its step's target count."""
    if packed:
        batch = collate.collate_packed(rows, pad_id)
    else:
        batch = collate.collate_padded([row[0] for row in rows], pad_id)
    batch["step_target_tokens"] = step_target_tokens
    return batch


class PlannedBatches(Dataset):
    """Map-style view that collates one planned `MicroBatch` per item (in workers when they exist)."""

    def __init__(self, samples: list[EncodedSample], pad_id: int, packed: bool):
        self.samples, self.pad_id, self.packed = samples, pad_id, packed

    def __getitem__(self, mb: MicroBatch) -> dict[str, Any]:
        rows = [[self.samples[i] for i in row] for row in mb.rows]
        return collate_samples(rows, self.pad_id, self.packed, mb.step_target_tokens)


class SFTDataModule(PlannedDataModule):
    """Chat SFT or plain-text CPT data.

    Args:
        tokenizer: model spec whose tokenizer encodes the data (linked from the model in YAML).
        dataset: training files (`.jsonl`, `.json`, `.csv`, `.parquet`), each optionally `path#N`.
        val_dataset: validation files; otherwise `val_split` of the training rows.
        val_split: fraction of training rows held out for validation when no `val_dataset` is given.
        kind: `chat` (messages-like rows, loss on assistant turns) or `text` (CPT, no template).
        columns: renames applied to raw columns before format detection, e.g. `{question: query}`.
        template: named chat template, or None for the tokenizer's own.
        system: system prompt for conversations without one.
        loss_on: which turns carry labels.
        max_length: longest encoded sample (or packed row).
        truncation: what to do with longer samples: `right`, `left`, `drop` or `split` (CPT chunks).
        packing: bin-pack samples into rows of `max_length` (no attention across samples).
        batch_size: rows per micro-batch (packed rows when packing).
        val_batch_size: rows per validation batch (default `batch_size`).
        shuffle: reshuffle every epoch (seeded).
        seed: seed for `path#N` sampling, the validation split and shuffling.
        num_workers: DataLoader worker processes (with streaming they split the tokenization).
        on_bad_row: `raise` stops before training with every bad row listed (streaming: when the run
            reaches the first bad row, naming its `file:line`); `skip` drops them and reports the counts
            by reason (streaming: at the end of each pass over the data, or at teardown).
        streaming: read, encode, shuffle and pack the training rows lazily while training, so memory does
            not grow with the file (`path#N` takes the first N rows; needs `trainer.max_steps`; validation
            comes from `val_dataset`, read whole, since `val_split` is refused).
        shuffle_buffer: streaming only: units (samples, or packed rows) in the seeded shuffle buffer.
        packing_buffer: streaming only: samples bin-packed together (FFD within each buffer, not the file).
        encode_cache: reuse rows encoded by an earlier run with the same data, tokenizer, template and
            settings (`$LIT_SWIFT_CACHE/encoded`); false re-encodes every run. Streaming never uses it.
    """

    def __init__(
        self,
        tokenizer: str,
        dataset: str | list[str],
        val_dataset: str | list[str] | None = None,
        val_split: float = 0.0,
        kind: Literal["chat", "text"] = "chat",
        columns: dict[str, str] | None = None,
        template: str | None = None,
        system: str | None = None,
        loss_on: LossOn = "assistant",
        max_length: int = 2048,
        truncation: Truncation = "right",
        packing: bool = False,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 42,
        num_workers: int = 0,
        on_bad_row: Literal["raise", "skip"] = "raise",
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        packing_buffer: int = 1000,
        encode_cache: bool = True,
    ):
        super().__init__(
            tokenizer, dataset, val_dataset, val_split, columns, batch_size, val_batch_size, shuffle, seed,
            num_workers, on_bad_row, streaming, shuffle_buffer, encode_cache,
        )  # fmt: skip
        self.kind, self.template, self.system, self.loss_on = kind, template, system, loss_on
        self.max_length, self.truncation, self.packing = max_length, truncation, packing
        self.packing_buffer = packing_buffer
        self.train_samples: list[EncodedSample] | None = None
        self.val_samples: list[EncodedSample] = []

    # ----- stages -----
    def _prepare(self, train: list[tuple[Any, str]], val: list[tuple[Any, str]]) -> None:
        self.encoder = ChatEncoder(
            self.tokenizer, system=self.system, loss_on=self.loss_on, template=self.template
        )
        self.train_samples = self._encode(train, "train")
        self.val_samples = self._encode(val, "validation")

    def _encode(self, rows: list[tuple[Any, str]], split: str) -> list[EncodedSample]:
        samples = encode_all(rows, self._encode_one, split, self._encode_cache)
        if samples:
            rank_zero_info(f"{split}: {len(samples)} samples, {sum(map(len, samples))} tokens")
        return samples

    def _encode_one(self, row: ChatRow | TextRow, where: Any) -> Encoded:
        sample = self._encode_row(row, str(where))
        pieces = truncate(sample, self.max_length, self.truncation)
        # a chunk of prompt-only text after splitting carries nothing to learn
        kept = [p for p in pieces if num_targets(p) > 0 or self.truncation != "split"]
        note = None
        if len(sample) > self.max_length:
            note = f"sample(s) handled by truncation={self.truncation} (longer than max_length {self.max_length})"
        return Encoded([check_labels(p, str(where)) for p in kept], note)

    def _encode_row(self, row: ChatRow | TextRow, where: str) -> EncodedSample:
        if isinstance(row, TextRow):
            ids = self.tokenizer(row.text, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
            return EncodedSample(ids, list(ids))
        return self.encoder.encode(row, where)

    # ----- loaders -----
    def _units(self, samples: list[EncodedSample]) -> list[tuple[int, ...]]:
        if not self.packing:
            return [(i,) for i in range(len(samples))]
        lengths = [len(s) for s in samples]
        bins = packing.pack_first_fit_decreasing(lengths, self.max_length)
        rank_zero_info(f"packing efficiency {packing.packing_efficiency(bins, lengths, self.max_length):.4f}")
        return [tuple(b) for b in bins]

    def _loader(self, samples: list[EncodedSample], batch_size: int, train: bool) -> DataLoader:
        dataset = PlannedBatches(samples, self.tokenizer.pad_token_id, self.packing)
        return self._planned_loader(
            dataset, self._units(samples), [num_targets(s) for s in samples], batch_size, train
        )

    def _train_loader(self) -> DataLoader:
        return self._loader(self.train_samples, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_samples, self.val_batch_size, train=False) if self.val_samples else []

    # ----- streaming -----
    def _stream_units(self, items: Iterator[tuple[int, EncodedSample]]) -> Iterator[Unit]:
        if not self.packing:
            return super()._stream_units(items)
        bins = packing.pack_stream(items, self.max_length, self.packing_buffer, length=_sample_length)
        return (tuple(b) for b in bins)

    def _unit_weight(self, unit: Unit) -> int:
        return sum(num_targets(sample) for _, sample in unit)

    def _collate_units(self, units: list[Unit], step_total: int) -> dict[str, Any]:
        rows = [[sample for _, sample in unit] for unit in units]
        return collate_samples(rows, self.tokenizer.pad_token_id, self.packing, step_total)


def _sample_length(item: tuple[int, EncodedSample]) -> int:
    return len(item[1])
