"""scripts/make_grpo_data.py: distinct questions, held-out split disjoint from training, reward columns."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_grpo_data_writes_disjoint_splits(tmp_path):
    spec = importlib.util.spec_from_file_location("make_grpo_data", ROOT / "scripts/make_grpo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out", str(tmp_path), "--train", "40", "--val", "10"])
    train, val = ([json.loads(line) for line in (tmp_path / f"{s}.jsonl").open()] for s in ("train", "val"))
    assert len(train) == 40 and len(val) == 10
    question = lambda r: r["messages"][0]["content"]  # noqa: E731
    assert not {question(r) for r in train} & {question(r) for r in val}
    assert all(
        json.loads(r["metadata"])["source_dataset"] == "basic_arithmetic" and r["solution"] for r in train
    )
