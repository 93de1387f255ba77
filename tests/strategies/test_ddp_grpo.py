"""GRPO under two gloo DDP processes (2 prompts each) takes the same optimizer steps as one process with
4 prompts: completions are seeded per prompt, and DAPO's token-level loss is normalised by the step's
token count summed over the ranks. Plain SGD, so a wrong loss scale would show in the weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def fit(root: Path, *extra: str) -> None:
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}
    dapo = {"class_path": "lit_swift.losses.rl.DAPOLoss"}
    plugin = str(ROOT / "tests/objectives/grpo_plugin.py") + ":diversity"  # rewards that spread
    args = [
        sys.executable, "-m", "lit_swift", "fit", "--config", str(ROOT / "configs/debug/grpo.yaml"), *extra,
        "--model.init_args.optimizer", json.dumps(sgd), "--model.init_args.loss", json.dumps(dapo),
        "--model.init_args.rewards", json.dumps([plugin]), "--model.init_args.reward_weights", "null",
        "--model.init_args.mini_batch_size", "3", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(root),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert proc.returncode == 0, out[-6000:]


def lora_weights(root: Path) -> dict[str, torch.Tensor]:
    ckpt = next(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_two_gloo_processes_match_one_process(tmp_path):
    fit(tmp_path / "one", "--data.init_args.batch_size", "4")
    ddp = ["--config", str(ROOT / "configs/trainer/ddp_cpu.yaml"), "--data.init_args.batch_size", "2"]
    fit(tmp_path / "ddp", *ddp)
    one, two = lora_weights(tmp_path / "one"), lora_weights(tmp_path / "ddp")
    assert one.keys() == two.keys() and any("lora_B" in k and v.abs().sum() > 0 for k, v in one.items())
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-6, msg=name)
