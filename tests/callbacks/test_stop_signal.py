"""SIGTERM (pre-emption) and SIGINT (Ctrl-C) stop a real `lit-swift fit` process gracefully: a checkpoint
at the next optimizer-step boundary, exit code 128 + signal, and `--ckpt_path last` continues the loss
curve exactly (issue 13, item 7)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = str(ROOT / "data/quickstart/identity.jsonl#12")  # batch 2, accumulate 2: 3 steps per epoch
MAX_STEPS = 12


def write_config(folder: Path) -> Path:
    config = yaml.safe_load((ROOT / "configs/debug/sft.yaml").read_text())
    config["trainer"].update(
        max_steps=MAX_STEPS, accumulate_grad_batches=2, default_root_dir=str(folder / "runs")
    )
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lit_swift.callbacks.hf_checkpoint.HFCheckpoint",
            "init_args": {"every_n_train_steps": 2, "save_top_k": -1, "save_hf": False},
        }
    ]
    model = config["model"]["init_args"]
    model["tuner"]["init_args"]["dropout"] = 0.2
    model["config_overrides"] = {"num_hidden_layers": 1}
    config["data"]["init_args"].update(dataset=DATA, batch_size=2, shuffle=True, max_length=64)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lit_swift", "fit", "--config", str(config), *extra]


def losses_by_step(root: Path) -> dict[int, float]:
    losses = {}
    for path in sorted(root.glob("lightning_logs/version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                losses[int(row["step"])] = float(row["train/loss"])
    return losses


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)
def test_signal_saves_at_a_step_boundary_exits_and_resumes_exactly(tmp_path, signum):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    full_dir, stopped_dir = tmp_path / "full", tmp_path / "stopped"
    full_dir.mkdir(), stopped_dir.mkdir()
    subprocess.run(command(write_config(full_dir)), cwd=ROOT, env=env, check=True, capture_output=True)
    full = losses_by_step(full_dir / "runs")
    assert sorted(full) == list(range(MAX_STEPS))

    config = write_config(stopped_dir)
    proc = subprocess.Popen(
        command(config), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    checkpoints = stopped_dir / "runs/lightning_logs/version_0/checkpoints"
    deadline = time.time() + 300
    while not list(checkpoints.glob("*step=2.ckpt")):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    os.kill(proc.pid, signum)
    stderr = proc.communicate(timeout=300)[1].decode()
    # main before: SIGTERM stopped mid-accumulation without a checkpoint; SIGINT exited 1 without one
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert f"{signal.Signals(signum).name} received" in stderr and "--ckpt_path last" in stderr
    saved = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    stopped_at = saved["global_step"]
    assert 2 <= stopped_at < MAX_STEPS, stopped_at
    assert saved["SFTDataModule"]["batches_done"] % 2 == 0  # at an optimizer-step boundary

    subprocess.run(command(config, "--ckpt_path", "last"), cwd=ROOT, env=env, check=True, capture_output=True)
    resumed = losses_by_step(stopped_dir / "runs")
    for step in range(stopped_at, MAX_STEPS):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6, abs=1e-7), step
