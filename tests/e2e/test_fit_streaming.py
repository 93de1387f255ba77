"""End to end: `lit-swift fit` on the debug streaming SFT config trains and checkpoints its stream position."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from lit_swift.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_streaming_fit_finishes_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config names its data file relative to the repo root
    config = ROOT / "configs/debug/sft_streaming.yaml"
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    run_dir = next(tmp_path.glob("lightning_logs/version_*"))
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6 and (run_dir / "checkpoints" / "last.hf" / "adapter_config.json").exists()
    stream = ckpt["SFTDataModule"]["stream"]
    assert stream["seed"] == 42 and stream["rows_read"] > 0
