"""The logger fragments write locally: CSV by default, TensorBoard event files, a W&B offline run folder.

A tiny linear LightningModule stands in for the LLM; the loggers are built from the shipped
`configs/trainer/*.yaml` fragments with `save_dir` pointed at a temporary folder.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lit_swift.callbacks.throughput import Throughput
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[2]


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path: Path, logger) -> None:
    data = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=3, logger=logger, log_every_n_steps=1, default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")],
    )  # fmt: skip
    trainer.fit(Tiny(), DataLoader(data, batch_size=2))


def fragment_logger(name: str, save_dir: Path):
    spec = yaml.safe_load((ROOT / "configs" / "trainer" / name).read_text())["trainer"]["logger"]
    module, _, cls = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), cls)(**{**spec["init_args"], "save_dir": str(save_dir)})


def test_csv_logger_writes_metrics_and_learning_rate(tmp_path):
    fit(tmp_path, L.pytorch.loggers.CSVLogger(tmp_path))
    text = next(tmp_path.glob("lightning_logs/version_*/metrics.csv")).read_text()
    assert "train/loss" in text and "lr-SGD" in text


def test_tensorboard_fragment_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    fit(tmp_path, fragment_logger("tensorboard.yaml", tmp_path / "runs"))
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_wandb_fragment_writes_an_offline_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = fragment_logger("wandb.yaml", tmp_path / "runs")
    fit(tmp_path, logger)
    wandb.finish()
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, f"no offline run under {tmp_path}"
    assert any(p.suffix == ".wandb" for p in runs[0].iterdir())


def test_throughput_logs_through_a_real_trainer(tmp_path):
    """Mask-free batches count every position: 2 rows x 3 ids = 6 tokens per step, no padding; no HF
    config inside the module, so no MFU."""

    class TokenTiny(Tiny):
        def training_step(self, batch, batch_idx):
            return super().training_step((batch["x"], batch["y"]), batch_idx)

    rows = [
        {"x": torch.randn(4), "y": torch.randn(1), "input_ids": torch.zeros(3, dtype=torch.long)}
        for _ in range(8)
    ]
    trainer = L.Trainer(
        accelerator="cpu", max_steps=2, log_every_n_steps=1, default_root_dir=tmp_path, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Throughput(peak_flops=1e9)],
    )  # fmt: skip
    trainer.fit(TokenTiny(), DataLoader(rows, batch_size=2))
    metrics = trainer.callback_metrics
    assert metrics["throughput/tokens_per_sec"] > 0 and metrics["throughput/padding_fraction"] == 0
    assert metrics["throughput/samples_per_sec"] * 3 == pytest.approx(
        metrics["throughput/tokens_per_sec"].item()
    )
    assert "throughput/mfu" not in metrics
