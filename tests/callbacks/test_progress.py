"""The progress bar shows the loss, the learning rate and tokens/s (values from a real Trainer)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lit_swift.callbacks.progress import LearningRateMonitor
from lit_swift.callbacks.throughput import Throughput
from torch.utils.data import DataLoader


class TokenTiny(L.LightningModule):
    """A linear model fed token batches; logs `train/loss` to the progress bar as the objectives do."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch["x"]), batch["y"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)}


def test_progress_bar_shows_loss_learning_rate_and_tokens_per_second(tmp_path):
    """StepLR halves the LR every epoch (4 batches of 2): the 5th batch, the last one, trains at 0.05."""
    rows = [{"x": torch.randn(4), "y": torch.randn(1), "input_ids": torch.zeros(3, dtype=torch.long)}] * 10
    monitor = LearningRateMonitor(logging_interval="step")
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=4, max_steps=5, log_every_n_steps=1,
        default_root_dir=tmp_path, enable_checkpointing=False, enable_model_summary=False,
        callbacks=[monitor, Throughput(peak_flops=1e9)],
    )  # fmt: skip
    trainer.fit(TokenTiny(), DataLoader(rows, batch_size=2))
    shown = trainer.progress_bar_metrics
    assert {"train/loss", "lr", "throughput/tokens_per_sec"} <= set(shown)
    assert shown["lr"] == pytest.approx(0.05) and shown["throughput/tokens_per_sec"] > 0
    assert "lr" not in trainer.logged_metrics  # the logger gets Lightning's `lr-SGD` instead
    assert monitor.lrs["lr-SGD"][-1] == 0.05
