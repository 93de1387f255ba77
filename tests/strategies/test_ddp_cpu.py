"""Two gloo DDP processes on CPU train exactly like one process with the same global batch, and resume on one.

The debug SFT config runs with plain SGD (its update is linear in the gradient, so a wrong loss scale
would show; Adam would hide it) for 3 steps: batch 2 x 2 ranks vs batch 4 x 1 process. Compared: the
per-step global loss (sum of NLL / step target tokens), the per-step gradient norm after the all-reduce,
and the trained LoRA weights. The DDP `last.ckpt` then resumes in one process to step 4 and must match
the single-process run's step 4 (and does so without the warning a changed layout gets).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHECKPOINT = "lit_swift.callbacks.hf_checkpoint.HFCheckpoint"


class StepRecorder(L.Callback):
    """Writes `{step: [global loss, grad norm]}` per rank to `out/rank{R}.json` (imported by class_path)."""

    def __init__(self, out: str):
        self.out, self.steps = Path(out), {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.steps[trainer.global_step + 1] = [None, norm.item()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank's loss is sum_r(NLL) * world / step_tokens; their mean is the step's global loss
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.steps[trainer.global_step][0] = loss.item()

    def on_train_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))


def fit_args(root: Path, steps: int, record: Path, *extra: str) -> list[str]:
    recorder = {"class_path": "test_ddp_cpu.StepRecorder", "init_args": {"out": str(record)}}
    # Every step, so the last checkpoint is a mid-epoch one (a checkpoint written by `on_train_epoch_end`
    # after max_steps counts as a finished epoch: a resume skips the epoch's remaining batches).
    checkpoint = {"class_path": CHECKPOINT, "init_args": {"every_n_train_steps": 1}}
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}
    return [
        "fit",
        "--config", str(ROOT / "configs/debug/sft.yaml"),
        *extra,
        "--model.init_args.optimizer", json.dumps(sgd),
        "--trainer.max_steps", str(steps),
        "--trainer.default_root_dir", str(root),
        "--trainer.callbacks", json.dumps([recorder, checkpoint]),
    ]  # fmt: skip


def run(args: list[str], timeout: int = 240) -> str:
    """`python -m lit_swift ARGS` -> its output; on timeout the whole process group goes (Lightning's rank
    processes too)."""
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    command = [sys.executable, "-m", "lit_swift", *args]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    assert proc.returncode == 0, out[-6000:]
    return out


def steps_of(record: Path, rank: int = 0) -> dict[int, list[float]]:
    return {int(k): v for k, v in json.loads((record / f"rank{rank}.json").read_text()).items()}


def lora_weights(root: Path) -> dict[str, torch.Tensor]:
    ckpt = next(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_ddp_two_cpu_processes_match_one_process_and_resume_on_one(tmp_path):
    one, ddp, resumed = tmp_path / "one", tmp_path / "ddp", tmp_path / "resumed"
    run(fit_args(one, 4, one / "record"))
    ddp_cfg = ["--config", str(ROOT / "configs/trainer/ddp_cpu.yaml"), "--data.init_args.batch_size", "2"]
    run(fit_args(ddp, 3, ddp / "record", *ddp_cfg))

    single, rank0, rank1 = steps_of(one / "record"), steps_of(ddp / "record"), steps_of(ddp / "record", 1)
    assert rank0 == rank1  # the reduced loss and the all-reduced gradients agree across ranks
    for step in (1, 2, 3):
        assert rank0[step] == pytest.approx(single[step], rel=1e-4), step
    assert single[3][1] != pytest.approx(single[1][1], rel=1e-3)  # training moved: not a constant

    ckpt = next(ddp.glob("lightning_logs/version_*/checkpoints/last.ckpt"))
    out = run(fit_args(resumed, 4, resumed / "record", "--ckpt_path", str(ckpt)))
    assert "not an exact resume" not in out  # 2 ranks x batch 2 -> 1 x batch 4 keeps the layout's slots
    assert steps_of(resumed / "record")[4] == pytest.approx(single[4], rel=1e-4)
    final, expected = lora_weights(resumed), lora_weights(one)
    assert final.keys() == expected.keys() and all("lora_" in k for k in final)
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-4, atol=1e-5, msg=name)
