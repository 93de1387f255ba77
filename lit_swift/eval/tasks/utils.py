"""Data loader for the offline lit-swift lm-eval tasks: a JSONL file next to the task YAML, as a `test` split."""

from __future__ import annotations

from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_jsonl(data_file: str, **_metadata) -> datasets.DatasetDict:
    """lm-eval `custom_dataset`: `data_file` is relative to this folder; lm-eval also passes task metadata."""
    path = HERE / data_file
    if not path.exists():
        raise ValueError(f"lit-swift eval data {path} is missing: rebuild it with scripts/make_eval_data.py")
    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(path))})
