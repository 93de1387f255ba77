"""DataModules for pairwise preference data (DPO family, reward models) and unpaired KTO data.

Rows are encoded once (`ChatEncoder.encode_completion`, labels only on the answer); each micro-batch
is planned per epoch by `EpochPlanSampler` (one planning unit = one pair or KTO row) and collated into
2B sequences in one batch: for pairs `[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]`, for KTO
`[completion_0..completion_{B-1}, kl_0..kl_{B-1}]`, where `kl_i` is completion i after prompt i+1 mod B.
Besides the collate keys (see `collate.py`) every batch has `row_ids` [B] (unique over train and
validation rows, for cached reference log-probs) and `step_num_rows` (pairs/rows in the optimizer step).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lit_swift.data import collate, sources
from lit_swift.data.base import PlannedDataModule
from lit_swift.data.datamodule import num_targets
from lit_swift.data.plan import Encoded, MicroBatch, encode_all
from lit_swift.data.stream import Unit
from lit_swift.data.template import ChatEncoder, truncate
from lit_swift.types import IGNORE_INDEX, EncodedSample, KTORow, PreferenceRow

PairTruncation = Literal["right", "left", "drop"]


@dataclass
class PairItem:
    """An encoded preference pair and its reward margin (0 unless a margin column is given)."""

    chosen: EncodedSample
    rejected: EncodedSample
    margin: float = 0.0


@dataclass
class KTOItem:
    """An encoded KTO row; `prompt_length` tokens precede the completion (for mismatched KL pairs)."""

    sample: EncodedSample
    prompt_length: int
    desirable: bool


def collate_pairs(items: list[PairItem], pad_id: int, packed: bool, max_length: int) -> dict[str, Any]:
    """Padded or packed batch of 2B sequences plus `margin` [B] float."""
    pairs = [(it.chosen, it.rejected) for it in items]
    if packed:
        batch = collate.collate_preference_packed(pairs, pad_id, max_length)
    else:
        batch = collate.collate_preference(pairs, pad_id)
    batch["margin"] = torch.tensor([it.margin for it in items], dtype=torch.float32)  # [B]
    return batch


def kl_sample(prompt_item: KTOItem, completion_item: KTOItem, max_length: int) -> EncodedSample:
    """Completion of `completion_item` after the prompt of `prompt_item`, cutting the prompt's start to fit."""
    p = prompt_item.sample.input_ids[: prompt_item.prompt_length]
    c = completion_item.sample
    ids, labels = c.input_ids[completion_item.prompt_length :], c.labels[completion_item.prompt_length :]
    p = p[max(0, len(p) + len(ids) - max_length) :]
    return EncodedSample(p + ids, [IGNORE_INDEX] * len(p) + labels)


def collate_kto(items: list[KTOItem], pad_id: int, packed: bool, max_length: int) -> dict[str, Any]:
    """2B sequences: the B rows, then B mismatched pairs (completion i after prompt i+1 mod B)."""
    num = len(items)
    kl = [kl_sample(items[(i + 1) % num], items[i], max_length) for i in range(num)]
    pairs = [(it.sample, k) for it, k in zip(items, kl, strict=True)]
    if packed:
        batch = collate.collate_preference_packed(pairs, pad_id, max_length)
    else:
        batch = collate.collate_preference(pairs, pad_id)
    batch["desirable"] = torch.tensor([it.desirable for it in items], dtype=torch.bool)  # [B]
    return batch


class PlannedItems(Dataset):
    """Collates one planned `MicroBatch` (rows of one item index each) per item; row ids start at `id_offset`."""

    def __init__(
        self, items: list, collate_ids: Callable[[list[int], list, int], dict[str, Any]], id_offset: int
    ):
        self.items, self.collate_ids, self.id_offset = items, collate_ids, id_offset

    def __getitem__(self, mb: MicroBatch) -> dict[str, Any]:
        ids = [row[0] for row in mb.rows]
        items = [self.items[i] for i in ids]
        return self.collate_ids([i + self.id_offset for i in ids], items, mb.step_target_tokens)


class PreferenceDataModule(PlannedDataModule):
    """Preference pairs (prompt, chosen, rejected) for DPO-family objectives and reward models.

    Args:
        tokenizer: model spec whose tokenizer encodes the data (linked from the model in YAML).
        dataset: training files (`.jsonl`, `.json`, `.csv`, `.parquet`), each optionally `path#N`.
        val_dataset: validation files; otherwise `val_split` of the training rows.
        val_split: fraction of training rows held out for validation when no `val_dataset` is given.
        columns: renames applied to raw columns before format detection, e.g. `{question: prompt}`.
        template: named chat template, or None for the tokenizer's own.
        system: system prompt for conversations without one.
        margin_column: raw column holding a per-pair reward margin (reward models); None gives 0.
        max_length: longest encoded sequence (prompt + one answer); packed rows hold this many tokens.
        truncation: longer sequences keep their start (`right`), their end (`left`), or drop the row;
            a row whose answer loses every token is dropped either way (and counted in the log).
        packing: pack the 2B sequences of a micro-batch into rows of `max_length` (no cross-attention).
        batch_size: pairs (rows) per micro-batch.
        val_batch_size: pairs per validation batch (default `batch_size`).
        shuffle: reshuffle every epoch (seeded).
        seed: seed for `path#N` sampling, the validation split and shuffling.
        num_workers: DataLoader worker processes (with streaming they split the tokenization).
        on_bad_row: `raise` stops before training with every bad row listed (streaming: when the run
            reaches the first bad row); `skip` drops them and reports the counts by reason (streaming: at
            the end of each pass over the data, or at teardown).
        streaming: read and encode the training rows lazily while training (see `SFTDataModule`); row ids
            are then record indices, so `precompute_ref` (which needs every row up front) is refused.
        shuffle_buffer: streaming only: rows in the seeded shuffle buffer.
        encode_cache: reuse rows encoded by an earlier run with the same data, tokenizer, template and
            settings (`$LIT_SWIFT_CACHE/encoded`); false re-encodes every run. Streaming never uses it.
    """

    kind = "preference"

    def __init__(
        self,
        tokenizer: str,
        dataset: str | list[str],
        val_dataset: str | list[str] | None = None,
        val_split: float = 0.0,
        columns: dict[str, str] | None = None,
        template: str | None = None,
        system: str | None = None,
        margin_column: str | None = None,
        max_length: int = 1024,
        truncation: PairTruncation = "right",
        packing: bool = False,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 42,
        num_workers: int = 0,
        on_bad_row: Literal["raise", "skip"] = "raise",
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        encode_cache: bool = True,
    ):
        super().__init__(
            tokenizer, dataset, val_dataset, val_split, columns, batch_size, val_batch_size, shuffle, seed,
            num_workers, on_bad_row, streaming, shuffle_buffer, encode_cache,
        )  # fmt: skip
        self.template, self.system, self.margin_column = template, system, margin_column
        self.max_length, self.truncation, self.packing = max_length, truncation, packing
        self.train_items: list | None = None
        self.val_items: list = []

    # ----- stages -----
    def _prepare(self, train: list[tuple[Any, str, float]], val: list[tuple[Any, str, float]]) -> None:
        self.encoder = ChatEncoder(self.tokenizer, system=self.system, template=self.template)
        self.train_items = self._encode(train, "train")
        self.val_items = self._encode(val, "validation")
        if not self.train_items and not self.streaming:
            raise ValueError(f"{self.dataset}: no training rows left after encoding (see the log above)")

    def _read(self, paths: list[str], split: str = "training") -> list[tuple[Any, str, float]]:
        rows = super()._read(paths, split)
        margins = self._margins(self._specs(paths)) if self.margin_column else {}
        return [(row, str(where), margins.get(str(where), 0.0)) for row, where in rows]

    def _margins(self, specs: list[sources.DatasetSpec]) -> dict[str, float]:
        margins, problems = {}, []
        for spec in specs:
            for raw in sources.load_raw(spec, self.seed):
                try:
                    margins[str(raw.provenance)] = self._margin(raw.data, str(raw.provenance))
                except ValueError as e:
                    problems.append(f"  {e}")
        if problems:
            raise ValueError(f"{len(problems)} rows without a numeric margin:\n" + "\n".join(problems[:20]))
        return margins

    def _margin(self, raw: dict[str, Any], where: str) -> float:
        value = raw.get(self.margin_column)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where}: {self.margin_column!r} is {value!r}, not a number")

    def _fit(self, sample: EncodedSample) -> EncodedSample | None:
        pieces = truncate(sample, self.max_length, self.truncation)
        return pieces[0] if pieces and num_targets(pieces[0]) > 0 else None

    def _encode(self, rows: list[tuple[Any, str, float]], split: str) -> list:
        items = encode_all(rows, self._encode_one, split, self._encode_cache)
        if items:
            rank_zero_info(f"{split}: {len(items)} rows")
        return items

    def _encode_one(self, row: PreferenceRow | KTORow, where: str, margin: float = 0.0) -> Encoded:
        item = self._encode_row(row, where, margin)
        if item is None:
            limit = f"max_length {self.max_length} (truncation={self.truncation})"
            return Encoded([], f"row(s) dropped: longer than {limit} with no answer token kept")
        return Encoded([item])

    def _stream_encode(self, row: PreferenceRow | KTORow, where: str, raw: dict[str, Any]) -> Encoded:
        return self._encode_one(row, where, self._margin(raw, where) if self.margin_column else 0.0)

    def _encode_row(self, row: PreferenceRow, where: str, margin: float) -> PairItem | None:
        chosen = self._fit(self.encoder.encode_completion(row.messages, row.chosen, row.tools))
        rejected = self._fit(self.encoder.encode_completion(row.messages, row.rejected, row.tools))
        return None if chosen is None or rejected is None else PairItem(chosen, rejected, margin)

    collate_fn = staticmethod(collate_pairs)

    def _collate_ids(self, row_ids: list[int], items: list, step_num_rows: int) -> dict[str, Any]:
        batch = self.collate_fn(items, self.tokenizer.pad_token_id, self.packing, self.max_length)
        batch["row_ids"] = torch.tensor(row_ids, dtype=torch.long)  # [B]
        batch["step_num_rows"] = step_num_rows
        return batch

    def _collate_units(self, units: list[Unit], step_total: int) -> dict[str, Any]:
        return self._collate_ids([u[0][0] for u in units], [u[0][1] for u in units], step_total)

    # ----- loaders -----
    def _loader(self, items: list, batch_size: int, train: bool, id_offset: int) -> DataLoader:
        dataset = PlannedItems(items, self._collate_ids, id_offset)
        # one unit per row with one "target" each, so a micro-batch's step_target_tokens counts the rows
        # in its optimizer step
        units, targets = [(i,) for i in range(len(items))], [1] * len(items)
        return self._planned_loader(dataset, units, targets, batch_size, train)

    def _train_loader(self) -> DataLoader:
        return self._loader(self.train_items, self.batch_size, train=True, id_offset=0)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_items:
            return []
        return self._loader(self.val_items, self.val_batch_size, train=False, id_offset=len(self.train_items))

    def reference_dataloaders(self) -> list[DataLoader]:
        """Every train and validation row once, in order (to precompute reference log-probs)."""
        self._refuse_streaming("reference log-probs precomputed over every row")
        loaders = [self._loader(self.train_items, self.val_batch_size, train=False, id_offset=0)]
        return loaders + ([self.val_dataloader()] if self.val_items else [])

    @property
    def num_row_ids(self) -> int:
        """Row ids run over train then validation rows: `0 .. num_row_ids - 1`."""
        self._refuse_streaming("reference log-probs precomputed over every row")
        return len(self.train_items) + len(self.val_items)

    def _refuse_streaming(self, what: str) -> None:
        if self.streaming:
            raise ValueError(f"{what} need the training rows in memory; set streaming: false")


class KTODataModule(PreferenceDataModule):
    """Unpaired KTO rows (prompt, completion, desirable label); same arguments as `PreferenceDataModule`.

    Each micro-batch also carries the B mismatched (prompt i+1 mod B, completion i) sequences whose
    policy/reference log ratio estimates KTO's KL reference point, so `batch_size` must be > 1 (with
    one row the "mismatched" pair is the row itself). `margin_column` does not apply.
    """

    kind = "kto"
    collate_fn = staticmethod(collate_kto)

    def setup(self, stage: str | None = None) -> None:
        if self.batch_size < 2:
            raise ValueError(f"KTODataModule needs batch_size >= 2 for the KL pairs, got {self.batch_size}")
        super().setup(stage)
        if not self.streaming:
            counts = Counter(it.desirable for it in self.train_items)
            rank_zero_info(f"train: {counts[True]} desirable, {counts[False]} undesirable rows")

    def _encode_row(self, row: KTORow, where: str, margin: float) -> KTOItem | None:
        sample = self._fit(self.encoder.encode_completion(row.messages, row.completion, row.tools))
        if sample is None:
            return None
        prompt_length = next(i for i, label in enumerate(sample.labels) if label != IGNORE_INDEX)
        return KTOItem(sample, prompt_length, row.label)
