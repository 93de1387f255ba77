"""DataModules for embedding (query/positive/hard-negative) and reranker ((query, document) group) training.

Both read `EmbeddingRow`s, give every row a fixed number of hard negatives, and serve micro-batches
planned per epoch by `EpochPlanSampler` (rank shards, seeded shuffle, exact mid-epoch resume). Texts
are tokenised per batch, in the collate, so `setup` encodes nothing and the encoded-row cache is off.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from lit_swift.data.base import PlannedDataModule
from lit_swift.data.plan import Encoded, MicroBatch
from lit_swift.data.stream import Unit
from lit_swift.types import EmbeddingRow

Grouped = tuple[EmbeddingRow, list[str]]
"""A row and its fixed hard negatives."""


NO_NEGATIVES_FIX = (
    "set `num_negatives: 0` (data.init_args) to train on in-batch negatives only, or give those rows a "
    "`negatives` list"
)


def pick_negatives(
    rows: list[tuple[EmbeddingRow, Any]], num_negatives: int, required: bool = True
) -> list[list[str]]:
    """Exactly `num_negatives` hard negatives per row, cycling a row's own list when it is shorter.

    With `required=False` (validation of a bi-encoder: every document of the split is a candidate
    anyway) a row without negatives keeps none.

    Raises:
        ValueError: listing (file:line) every row that has no negatives when some are required.
    """
    if num_negatives == 0:
        return [[] for _ in rows]
    missing = [str(where) for row, where in rows if not row.negatives]
    if missing and required:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(
            f"num_negatives={num_negatives} but {len(missing)} row(s) have no negatives: {shown} "
            f"({NO_NEGATIVES_FIX})"
        )
    return [cycle_negatives(row, num_negatives) if row.negatives else [] for row, _ in rows]


def cycle_negatives(row: EmbeddingRow, num_negatives: int) -> list[str]:
    return [row.negatives[i % len(row.negatives)] for i in range(num_negatives)]


class PlannedRows(Dataset):
    """Map-style view collating one planned `MicroBatch` (one row index per entry) per item."""

    def __init__(self, collate, num_rows: int):
        self.collate, self.num_rows = collate, num_rows

    def __getitem__(self, mb: MicroBatch) -> dict[str, Any]:
        return self.collate([row[0] for row in mb.rows])


def _tokenize(
    tokenizer: Any, max_length: int, texts: list[str], pairs: list[str] | None = None
) -> dict[str, Any]:
    return tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


class EmbeddingDataModule(PlannedDataModule):
    """Pairs, triplets or scored pairs for a bi-encoder; in-batch negatives come free with `batch_size`.

    A batch holds `query_*` tokens `[B, Tq]`, `doc_*` tokens `[B * (1 + num_negatives), Td]` (the B
    positives first, then each row's negatives row by row), `scores` `[B]` when every row has one, and
    `doc_ids` (validation corpus ids: equal texts share an id) for retrieval metrics.

    Args:
        tokenizer: model spec whose tokenizer encodes the texts (linked from the model in YAML).
        dataset: training files (`.jsonl`, `.json`, `.csv`, `.parquet`), each optionally `path#N`.
        val_dataset: validation files; otherwise `val_split` of the training rows.
        val_split: fraction of training rows held out when no `val_dataset` is given.
        columns: renames applied to raw columns first, e.g. `{question: query, answer: positive}`.
        num_negatives: hard negatives per row (cycled from the row's `negatives`); 0 uses none.
        max_length: longest tokenised text, truncated beyond.
        batch_size: queries per micro-batch.
        val_batch_size: queries per validation batch (default `batch_size`).
        shuffle: reshuffle the training rows every epoch (seeded).
        seed: seed for `path#N` sampling, the validation split and shuffling.
        num_workers: DataLoader worker processes.
        on_bad_row: `raise` stops before training with every bad row listed (streaming: when the run
            reaches the first bad row); `skip` drops them and reports the counts by reason (streaming: at
            the end of each pass over the data, or at teardown).
        streaming: read the training rows lazily while training (see `SFTDataModule`); texts are
            tokenised per batch in the main process.
        shuffle_buffer: streaming only: rows in the seeded shuffle buffer.
        append_eos: append the tokenizer's EOS token to every text (decoder LMs with last-token pooling).
    """

    kind = "embedding"
    shard_validation = False  # every rank ranks the whole validation corpus, so metrics are exact

    def __init__(
        self,
        tokenizer: str,
        dataset: str | list[str],
        val_dataset: str | list[str] | None = None,
        val_split: float = 0.0,
        columns: dict[str, str] | None = None,
        num_negatives: int = 0,
        max_length: int = 256,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 42,
        num_workers: int = 0,
        on_bad_row: Literal["raise", "skip"] = "raise",
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        *,
        append_eos: bool = False,
    ):
        super().__init__(
            tokenizer, dataset, val_dataset, val_split, columns, batch_size, val_batch_size, shuffle, seed,
            num_workers, on_bad_row, streaming, shuffle_buffer, encode_cache=False,
        )  # fmt: skip
        self.num_negatives, self.max_length, self.append_eos = num_negatives, max_length, append_eos
        self.rows: dict[str, list[EmbeddingRow]] | None = None
        self.negatives: dict[str, list[list[str]]] = {}
        self.doc_index: dict[str, int] = {}

    def _prepare(self, train: list[tuple[EmbeddingRow, Any]], val: list[tuple[EmbeddingRow, Any]]) -> None:
        # validation ranks every document of the split for each query: rows need no negatives there
        self.rows, self.negatives = _rows_and_negatives(
            train, val, self.num_negatives, val_needs_negatives=False
        )

    def _texts(self, texts: list[str]) -> list[str]:
        return [t + self.tokenizer.eos_token for t in texts] if self.append_eos else texts

    def collate(self, indices: list[int], split: str) -> dict[str, Any]:
        return self.collate_grouped([(self.rows[split][i], self.negatives[split][i]) for i in indices], split)

    def collate_grouped(self, grouped: list[Grouped], split: str) -> dict[str, Any]:
        rows = [r for r, _ in grouped]
        docs = [r.positive for r in rows] + [n for _, negatives in grouped for n in negatives]
        query = _tokenize(self.tokenizer, self.max_length, self._texts([r.query for r in rows]))
        doc = _tokenize(self.tokenizer, self.max_length, self._texts(docs))
        batch = {f"query_{k}": v for k, v in query.items()} | {f"doc_{k}": v for k, v in doc.items()}
        if all(r.score is not None for r in rows):
            batch["scores"] = torch.tensor([r.score for r in rows])
        if split == "val":
            batch["doc_ids"] = [self.doc_index.setdefault(t, len(self.doc_index)) for t in docs]
        return batch

    def _encode_one(self, row: EmbeddingRow, where: str) -> Encoded:
        return _grouped(row, where, self.num_negatives)

    def _collate_units(self, units: list[Unit], step_total: int) -> dict[str, Any]:
        return self.collate_grouped([u[0][1] for u in units], "train")

    def _train_loader(self) -> DataLoader:
        return _row_loader(self, "train", self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        return _row_loader(self, "val", self.val_batch_size) if self.rows["val"] else []


class RerankerDataModule(PlannedDataModule):
    """Groups for a cross-encoder: each query with its positive and `num_negatives` hard negatives.

    A batch holds the tokenised (query, document) pairs `[B * G, T]` (G = 1 + num_negatives, group by
    group) and `labels` `[B, G]`: the positive's `score` (default 1) then 0 for every negative. With
    `num_negatives: 0` rows are plain labelled pairs (`score`/`label` column) for pointwise training.

    Args:
        tokenizer: model spec whose tokenizer encodes the texts (linked from the model in YAML).
        dataset: training files (`.jsonl`, `.json`, `.csv`, `.parquet`), each optionally `path#N`.
        val_dataset: validation files; otherwise `val_split` of the training rows.
        val_split: fraction of training rows held out when no `val_dataset` is given.
        columns: renames applied to raw columns first, e.g. `{question: query, answer: positive}`.
        num_negatives: hard negatives per row (cycled from the row's `negatives`); 0 uses none.
        max_length: longest tokenised query+document pair, truncated beyond.
        batch_size: queries (groups) per micro-batch.
        val_batch_size: queries per validation batch (default `batch_size`).
        shuffle: reshuffle the training rows every epoch (seeded).
        seed: seed for `path#N` sampling, the validation split and shuffling.
        num_workers: DataLoader worker processes.
        on_bad_row: `raise` stops before training with every bad row listed (streaming: when the run
            reaches the first bad row); `skip` drops them and reports the counts by reason (streaming: at
            the end of each pass over the data, or at teardown).
        streaming: read the training rows lazily while training (see `SFTDataModule`); texts are
            tokenised per batch in the main process.
        shuffle_buffer: streaming only: rows in the seeded shuffle buffer.
    """

    kind = "embedding"
    shard_validation = False  # every rank ranks the whole validation corpus, so metrics are exact

    def __init__(
        self,
        tokenizer: str,
        dataset: str | list[str],
        val_dataset: str | list[str] | None = None,
        val_split: float = 0.0,
        columns: dict[str, str] | None = None,
        num_negatives: int = 0,
        max_length: int = 256,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 42,
        num_workers: int = 0,
        on_bad_row: Literal["raise", "skip"] = "raise",
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
    ):
        super().__init__(
            tokenizer, dataset, val_dataset, val_split, columns, batch_size, val_batch_size, shuffle, seed,
            num_workers, on_bad_row, streaming, shuffle_buffer, encode_cache=False,
        )  # fmt: skip
        self.num_negatives, self.max_length = num_negatives, max_length
        self.rows: dict[str, list[EmbeddingRow]] | None = None
        self.negatives: dict[str, list[list[str]]] = {}

    def _prepare(self, train: list[tuple[EmbeddingRow, Any]], val: list[tuple[EmbeddingRow, Any]]) -> None:
        self.rows, self.negatives = _rows_and_negatives(train, val, self.num_negatives)

    def collate(self, indices: list[int], split: str) -> dict[str, Any]:
        return self.collate_grouped([(self.rows[split][i], self.negatives[split][i]) for i in indices])

    def collate_grouped(self, grouped: list[Grouped]) -> dict[str, Any]:
        rows = [r for r, _ in grouped]
        groups = [[r.positive, *negatives] for r, negatives in grouped]
        queries = [r.query for r, g in zip(rows, groups, strict=True) for _ in g]
        pairs = _tokenize(self.tokenizer, self.max_length, queries, [d for g in groups for d in g])
        labels = [[1.0 if r.score is None else r.score] + [0.0] * self.num_negatives for r in rows]
        return dict(pairs) | {"labels": torch.tensor(labels)}  # [B * G, T], [B, G]

    def _encode_one(self, row: EmbeddingRow, where: str) -> Encoded:
        return _grouped(row, where, self.num_negatives)

    def _collate_units(self, units: list[Unit], step_total: int) -> dict[str, Any]:
        return self.collate_grouped([u[0][1] for u in units])

    def _train_loader(self) -> DataLoader:
        return _row_loader(self, "train", self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        return _row_loader(self, "val", self.val_batch_size) if self.rows["val"] else []


def _grouped(row: EmbeddingRow, where: str, num_negatives: int) -> Encoded:
    """A streamed row with its hard negatives; a row without any, when some are needed, is an error."""
    if num_negatives and not row.negatives:
        raise ValueError(
            f"{where}: num_negatives={num_negatives} but the row has no negatives ({NO_NEGATIVES_FIX})"
        )
    return Encoded([(row, cycle_negatives(row, num_negatives))])


def _rows_and_negatives(
    train: list[tuple[EmbeddingRow, Any]],
    val: list[tuple[EmbeddingRow, Any]],
    num_negatives: int,
    val_needs_negatives: bool = True,
) -> tuple[dict[str, list[EmbeddingRow]], dict[str, list[list[str]]]]:
    """Rows and their fixed hard negatives, keyed by split (`train`, `val`)."""
    rows = {"train": [r for r, _ in train], "val": [r for r, _ in val]}
    negatives = {
        "train": pick_negatives(train, num_negatives),
        "val": pick_negatives(val, num_negatives, required=val_needs_negatives),
    }
    rank_zero_info(f"embedding rows: {len(train)} train, {len(val)} validation")
    return rows, negatives


def _row_loader(dm: EmbeddingDataModule | RerankerDataModule, split: str, batch_size: int) -> DataLoader:
    """The planned loader of one split: one unit (and one "target") per row, collated by `dm.collate`."""
    num = len(dm.rows[split])
    dataset = PlannedRows(lambda idx: dm.collate(idx, split), num)
    return dm._planned_loader(dataset, [(i,) for i in range(num)], [1] * num, batch_size, split == "train")
