"""Two gloo DDP processes gather in-batch negatives across ranks: they train like one process on the full batch.

The debug embedding config (MiniLM cut to 2 layers, InfoNCE under Matryoshka, 1 hard negative per row)
runs 3 plain-SGD steps (a wrong loss or gradient scale would show; Adam would hide it) with dropout off
and no shuffling: batch 2 x 2 ranks vs batch 4 x 1 process. With every rank's documents gathered, each
query scores the same 8 candidates as in the single-process run (in another order), so its InfoNCE term
is the same, and with equal query counts per rank the mean over ranks of the per-rank mean losses is the
global mean. Compared per step: that mean loss and the all-reduced gradient norm; then the trained
weights. Negative control: with `gather_across_ranks: false` each query sees only its rank's 4
documents, so the step-1 loss (before any update) differs.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# The SFT DDP test's subprocess runner and step recorder (the folder has no __init__.py; `run` puts this
# folder on the subprocesses' PYTHONPATH, so `test_ddp_cpu.StepRecorder` resolves there by class_path).
_spec = importlib.util.spec_from_file_location("_ddp_cpu_helpers", HERE / "test_ddp_cpu.py")
ddp_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddp_cpu)

NO_DROPOUT = {"num_hidden_layers": 2, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


class WeightDump(L.Callback):
    """Rank 0 saves the trained weights to `out/weights.pt` (imported by class_path)."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
            torch.save(state, self.out / "weights.pt")


def fit_args(root: Path, *extra: str) -> list[str]:
    record = str(root / "record")
    recorder = {"class_path": "test_ddp_cpu.StepRecorder", "init_args": {"out": record}}
    dump = {"class_path": "test_ddp_embedding.WeightDump", "init_args": {"out": record}}
    # small enough that the embeddings do not collapse (a collapsed model scores ln(8) on any layout)
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01}}
    return [
        "fit",
        "--config", str(ROOT / "configs/debug/embedding.yaml"),
        *extra,
        "--model.init_args.config_overrides", json.dumps(NO_DROPOUT),
        "--model.init_args.optimizer", json.dumps(sgd),
        "--data.init_args.shuffle", "false",
        "--trainer.max_steps", "3",
        "--trainer.limit_val_batches", "0",
        "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", str(root),
        "--trainer.callbacks", json.dumps([recorder, dump]),
    ]  # fmt: skip


DDP = ["--config", str(ROOT / "configs/trainer/ddp_cpu.yaml"), "--data.init_args.batch_size", "2"]


def test_ddp_embedding_gathers_in_batch_negatives_across_ranks(tmp_path):
    one, ddp, local = tmp_path / "one", tmp_path / "ddp", tmp_path / "local"
    ddp_cpu.run(fit_args(one))
    ddp_cpu.run(fit_args(ddp, *DDP))
    ddp_cpu.run(fit_args(local, *DDP, "--model.init_args.gather_across_ranks", "false"))

    single = ddp_cpu.steps_of(one / "record")
    rank0, rank1 = ddp_cpu.steps_of(ddp / "record"), ddp_cpu.steps_of(ddp / "record", 1)
    assert sorted(single) == [1, 2, 3]
    assert rank0 == rank1  # the reduced loss and the all-reduced gradients agree across ranks
    for step in (1, 2, 3):
        assert rank0[step] == pytest.approx(single[step], rel=1e-4), step
    assert single[3][1] != pytest.approx(single[1][1], rel=1e-3)  # training moved: not a constant
    assert single[3][0] != pytest.approx(single[1][0], rel=1e-3)

    trained, expected = (torch.load(r / "record/weights.pt", weights_only=True) for r in (ddp, one))
    assert trained.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-5, msg=name)

    # Negative control: without gathering, each query ranks only its own rank's 4 documents.
    unshared = ddp_cpu.steps_of(local / "record")
    assert unshared[1][0] != pytest.approx(single[1][0], rel=1e-2)
    assert unshared[1][0] < single[1][0]  # fewer negatives: an easier softmax, a smaller loss
