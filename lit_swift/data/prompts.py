"""Prompt-only data for RL rollouts: left-padded prompt batches that keep each row's extra columns.

Rows are `PromptRow`s (see `rows.py`); columns such as `solution` stay in `extra` for reward
functions. Prompts longer than `max_prompt_length` keep their end (the question and the assistant
header) or are dropped, and either is counted and reported.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from lit_swift.data.base import PlannedDataModule
from lit_swift.data.plan import Encoded, MicroBatch, encode_all
from lit_swift.data.stream import Unit
from lit_swift.data.template import ChatEncoder
from lit_swift.types import PromptRow

Prompt = tuple[list[int], dict[str, Any]]
"""An encoded prompt: token ids ending in the assistant header, and the row's extra columns."""


def collate_prompts(
    row_ids: list[int], prompts: list[Prompt], pad_id: int, step_num_rows: int
) -> dict[str, Any]:
    """Prompts padded on the left so generation continues each row; `row_ids` [B], `extra` per row."""
    width = max(len(ids) for ids, _ in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [B, T]
    for b, (ids, _) in enumerate(prompts):
        input_ids[b, width - len(ids) :] = torch.tensor(ids)
        attention_mask[b, width - len(ids) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: 0 at each prompt's start
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "row_ids": torch.tensor(row_ids),  # [B]
        "extra": [extra for _, extra in prompts],
        "step_num_rows": step_num_rows,  # prompts in the whole optimizer step
    }


class PromptBatches(Dataset):
    """Collates one planned `MicroBatch` of prompts (see `collate_prompts`)."""

    def __init__(self, prompts: list[list[int]], extras: list[dict[str, Any]], pad_id: int):
        self.prompts, self.extras, self.pad_id = prompts, extras, pad_id

    def __getitem__(self, mb: MicroBatch) -> dict[str, Any]:
        rows = [row[0] for row in mb.rows]
        prompts = [(self.prompts[i], self.extras[i]) for i in rows]
        return collate_prompts(rows, prompts, self.pad_id, mb.step_target_tokens)


class PromptDataModule(PlannedDataModule):
    """Prompts for RL (GRPO-family) rollouts.

    Args:
        tokenizer: model spec whose tokenizer encodes the prompts (linked from the model in YAML).
        dataset: training files (`.jsonl`, `.json`, `.csv`, `.parquet`), each optionally `path#N`.
        val_dataset: validation files; otherwise `val_split` of the training rows.
        val_split: fraction of training rows held out for validation when no `val_dataset` is given.
        columns: renames applied to raw columns before format detection, e.g. `{question: query}`.
        template: named chat template, or None for the tokenizer's own.
        system: system prompt for conversations without one.
        max_prompt_length: longest prompt in tokens (assistant header included).
        truncation: `left` keeps the end of a longer prompt; `drop` leaves the row out.
        batch_size: prompts per micro-batch.
        val_batch_size: prompts per validation batch (default `batch_size`).
        shuffle: reshuffle every epoch (seeded).
        seed: seed for `path#N` sampling, the validation split and shuffling.
        num_workers: DataLoader worker processes (with streaming they split the tokenization).
        on_bad_row: `raise` stops before training with every bad row listed (streaming: when the run
            reaches the first bad row); `skip` drops them and reports the counts by reason (streaming: at
            the end of each pass over the data, or at teardown).
        streaming: read and encode the training prompts lazily while training (see `SFTDataModule`); row
            ids are then record indices.
        shuffle_buffer: streaming only: prompts in the seeded shuffle buffer.
        encode_cache: reuse rows encoded by an earlier run with the same data, tokenizer, template and
            settings (`$LIT_SWIFT_CACHE/encoded`); false re-encodes every run. Streaming never uses it.
    """

    kind = "prompt"

    def __init__(
        self,
        tokenizer: str,
        dataset: str | list[str],
        val_dataset: str | list[str] | None = None,
        val_split: float = 0.0,
        columns: dict[str, str] | None = None,
        template: str | None = None,
        system: str | None = None,
        max_prompt_length: int = 1024,
        truncation: Literal["left", "drop"] = "left",
        batch_size: int = 8,
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
        self.template, self.system = template, system
        self.max_prompt_length, self.truncation = max_prompt_length, truncation
        self.train_prompts: tuple[list[list[int]], list[dict[str, Any]]] = ([], [])
        self.val_prompts: tuple[list[list[int]], list[dict[str, Any]]] = ([], [])

    def _prepare(self, train: list[tuple[PromptRow, Any]], val: list[tuple[PromptRow, Any]]) -> None:
        self.encoder = ChatEncoder(self.tokenizer, system=self.system, template=self.template)
        self.train_prompts = self._encode(train, "train")
        self.val_prompts = self._encode(val, "validation")

    def _encode(self, rows: list[tuple[PromptRow, Any]], split: str) -> tuple[list[list[int]], list[dict]]:
        prompts = encode_all(rows, self._encode_one, split, self._encode_cache)
        if split == "train" and rows and not prompts:
            raise ValueError(
                f"every training prompt is longer than max_prompt_length {self.max_prompt_length}"
            )
        return [ids for ids, _ in prompts], [extra for _, extra in prompts]

    def _encode_one(self, row: PromptRow, where: Any) -> Encoded:
        ids = self.encoder.prompt_ids(row.messages, row.tools, str(where))
        if len(ids) <= self.max_prompt_length:
            return Encoded([(ids, row.extra)])
        note = f"prompt(s) longer than {self.max_prompt_length} tokens, truncation={self.truncation}"
        if self.truncation == "drop":
            return Encoded([], note)
        return Encoded([(ids[-self.max_prompt_length :], row.extra)], note)

    def _collate_units(self, units: list[Unit], step_total: int) -> dict[str, Any]:
        ids, prompts = [u[0][0] for u in units], [u[0][1] for u in units]
        return collate_prompts(ids, prompts, self.tokenizer.pad_token_id, step_total)

    def _loader(
        self, prompts: tuple[list[list[int]], list[dict]], batch_size: int, train: bool
    ) -> DataLoader:
        ids, extras = prompts
        dataset = PromptBatches(ids, extras, self.tokenizer.pad_token_id)
        # each prompt weighs one in its optimizer step (`step_num_rows`)
        return self._planned_loader(
            dataset, [(i,) for i in range(len(ids))], [1] * len(ids), batch_size, train
        )

    def _train_loader(self) -> DataLoader:
        return self._loader(self.train_prompts, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_prompts, self.val_batch_size, train=False) if self.val_prompts[0] else []
