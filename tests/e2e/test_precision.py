"""The debug SFT config trains under bf16-mixed (fp32 adapters, bf16 compute) and bf16-true."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from lit_swift.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("bf16-mixed", "float32"), ("bf16-true", "bfloat16")],
    ids=["bf16-mixed", "bf16-true"],
)
def test_bf16_precisions_train_with_finite_loss(tmp_path, precision, dtype):
    main([
        "fit", "--config", str(ROOT / "configs/debug/sft.yaml"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.precision", precision, "--trainer.max_steps", "2",
        "--model.init_args.dtype", dtype, "--model.init_args.config_overrides", '{"num_hidden_layers": 1}',
        "--data.init_args.dataset", str(ROOT / "data/quickstart/identity.jsonl#4"),
        "--data.init_args.max_length", "48",
    ])  # fmt: skip
    run = next(tmp_path.glob("lightning_logs/version_*"))
    losses = [float(r["train/loss"]) for r in csv.DictReader((run / "metrics.csv").open()) if r["train/loss"]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    expected = torch.float32 if precision == "bf16-mixed" else torch.bfloat16
    assert state and all(v.dtype == expected for v in state.values())
