"""Exact resume: a run resumed from any checkpoint (mid-epoch, epoch end, after SIGKILL) reproduces the
uninterrupted run's per-step losses (CPU fp32, LoRA dropout on, shuffle on, cosine schedule)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lit_swift.callbacks.hf_checkpoint import HFCheckpoint

from lit_swift.data.datamodule import SFTDataModule
from lit_swift.objectives.sft import SFT
from lit_swift.optim import Constant, Cosine, Schedule
from lit_swift.tuners import LoRA

ROOT = Path(__file__).resolve().parents[2]
DATA = str(ROOT / "data/quickstart/identity.jsonl#10")  # batch 2 -> 5 micro-batches per epoch


class LossRecorder(L.Callback):
    """Loss returned by each training step, by global step."""

    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()


def fit(
    root: Path,
    max_steps: int,
    ckpt_path: str | None = None,
    accumulate: int = 1,
    data: str = DATA,
    every_n_train_steps: int | None = 1,
    scheduler: Schedule | None = None,
) -> tuple[dict[int, float], SFT]:
    L.seed_everything(0)
    model = SFT(
        "smollm2-135m-instruct",
        tuner=LoRA(r=4, alpha=8, dropout=0.2),
        optimizer=lambda p: torch.optim.AdamW(p, lr=5e-3),
        scheduler=scheduler or Cosine(warmup_steps=2),
        config_overrides={"num_hidden_layers": 1},
    )
    datamodule = SFTDataModule(
        "smollm2-135m-instruct", data, max_length=64, batch_size=2, shuffle=True, seed=3
    )
    recorder = LossRecorder()
    checkpoint = HFCheckpoint(
        dirpath=root, every_n_train_steps=every_n_train_steps, save_top_k=-1, save_hf=False
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        callbacks=[recorder, checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model, datamodule, ckpt_path=ckpt_path)
    return recorder.losses, model


def lora_state(model: SFT) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_in_process_resume_matches_uninterrupted(tmp_path):
    """Resume mid-epoch 0 (step 2), at the epoch boundary (step 5) and mid-epoch 1 (step 7)."""
    full, model = fit(tmp_path / "full", max_steps=8)
    final = lora_state(model)
    assert len(full) == 8
    for k in (2, 5, 7):
        ckpt = next((tmp_path / "full").glob(f"epoch=*-step={k}.ckpt"))
        resumed, model = fit(tmp_path / f"resume{k}", max_steps=8, ckpt_path=str(ckpt))
        assert sorted(resumed) == list(range(k + 1, 9))
        for step, loss in resumed.items():
            assert loss == pytest.approx(full[step], rel=1e-6, abs=1e-7), (k, step)
        for name, value in lora_state(model).items():
            torch.testing.assert_close(value, final[name], rtol=1e-5, atol=1e-7)


def test_resume_after_max_steps_stopped_mid_epoch(tmp_path):
    """A run stopped by max_steps=3 (mid-epoch 0) and continued to 8 equals one run of 8 steps.

    Constant LR: a schedule over `max_steps` differs between the two layouts by design.
    """
    constant = {"every_n_train_steps": None, "scheduler": Constant(warmup_steps=2)}
    full, _ = fit(tmp_path / "full", max_steps=8, **constant)
    fit(tmp_path / "first", max_steps=3, **constant)
    last = str(tmp_path / "first" / "last.ckpt")
    resumed, _ = fit(tmp_path / "more", max_steps=8, ckpt_path=last, **constant)
    assert sorted(resumed) == list(range(4, 9))
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], rel=1e-6, abs=1e-7), step


def test_in_process_resume_with_gradient_accumulation(tmp_path):
    """12 rows, batch 2, accumulate 2: 3 optimizer steps per epoch; resume mid-epoch 1 from step 4."""
    data = str(ROOT / "data/quickstart/identity.jsonl#12")
    full, model = fit(tmp_path / "full", max_steps=6, accumulate=2, data=data)
    final = lora_state(model)
    ckpt = next((tmp_path / "full").glob("epoch=1-step=4.ckpt"))
    resumed, model = fit(tmp_path / "resumed", max_steps=6, ckpt_path=str(ckpt), accumulate=2, data=data)
    for batch_end_step in (5, 6):  # the recorder sees each step's last micro-batch after the step
        assert resumed[batch_end_step] == pytest.approx(full[batch_end_step], rel=1e-6, abs=1e-7)
    for name, value in lora_state(model).items():
        torch.testing.assert_close(value, final[name], rtol=1e-5, atol=1e-7)


# ----- real processes: SIGKILL mid-run, then `--ckpt_path last` -----
def write_config(tmp_path: Path, max_steps: int) -> Path:
    config = yaml.safe_load((ROOT / "configs/debug/sft.yaml").read_text())
    config["trainer"].update(max_steps=max_steps, default_root_dir=str(tmp_path / "runs"))
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lit_swift.callbacks.hf_checkpoint.HFCheckpoint",
            "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "save_hf": False},
        }
    ]
    model = config["model"]["init_args"]
    model["tuner"]["init_args"]["dropout"] = 0.2
    model["scheduler"] = {"class_path": "lit_swift.optim.Cosine", "init_args": {"warmup_steps": 2}}
    model["config_overrides"] = {"num_hidden_layers": 1}
    config["data"]["init_args"].update(dataset=DATA, batch_size=2, shuffle=True, max_length=64)
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lit_swift", "fit", "--config", str(config), *extra]


def losses_by_step(root: Path) -> dict[int, float]:
    """`train/loss` per global step across every logger version (a resumed run logs to a new one)."""
    losses = {}
    for path in sorted(root.glob("lightning_logs/version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


def test_sigkill_then_resume_last_reproduces_the_loss_curve(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full_dir.mkdir(), killed_dir.mkdir()
    subprocess.run(command(write_config(full_dir, 9)), cwd=ROOT, env=env, check=True, capture_output=True)
    full = losses_by_step(full_dir / "runs")
    assert sorted(full) == list(range(9))

    config = write_config(killed_dir, 9)
    proc = subprocess.Popen(
        command(config), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while not list((killed_dir / "runs").glob("lightning_logs/version_0/checkpoints/epoch=1-step=7.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-epoch 1 (5 micro-batches per epoch): a checkpoint >= step 7
    proc.wait()
    # `--ckpt_path last` resumes from the newest complete checkpoint, which may be newer than last.ckpt
    checkpoints = (killed_dir / "runs/lightning_logs/version_0/checkpoints").glob("*.ckpt")
    resumed_from = max(
        torch.load(p, map_location="cpu", weights_only=True)["global_step"] for p in checkpoints
    )
    assert 7 <= resumed_from < 9

    subprocess.run(command(config, "--ckpt_path", "last"), cwd=ROOT, env=env, check=True, capture_output=True)
    resumed = losses_by_step(killed_dir / "runs")  # the killed process may never have flushed its log
    for step in range(resumed_from, 9):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step
