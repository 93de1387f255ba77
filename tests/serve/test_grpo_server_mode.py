"""GRPO in `server` mode against a `lit-swift rollout` process on CPU.

Synchronous: the debug run gives the same rewards and losses as the in-process HF engine (same seed,
same per-completion sampling seeds). With `prefetch`: the run trains one rollout behind generation, its
first trained rollout is the synchronous run's first one, and a resumed run repeats the uninterrupted
one (the in-flight rollout is part of the checkpoint)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lit_swift.cli import main
from tests.serve.helpers import free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = "smollm2-135m-instruct"
KEYS = ("train/reward", "train/loss")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    args = ["rollout", "--model", SMOLLM2, "--backend", "hf", "--config_overrides", "{num_hidden_layers: 2}"]
    proc = start_server([*args, "--dtype", "float32", "--device", "cpu", "--port", str(port)], port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def engine(url: str, **init_args) -> str:
    return json.dumps(
        {"class_path": "lit_swift.rollout.remote.ServerEngine", "init_args": {"url": url, **init_args}}
    )


def fit(root: Path, *extra: str) -> dict[int, tuple[float, ...]]:
    """Run the debug config; its logged (reward, loss) by optimizer step, over every version folder."""
    main(["fit", "--config", "configs/debug/grpo.yaml", "--trainer.default_root_dir", str(root), *extra])
    out = {}
    for path in sorted(root.glob("lightning_logs/version_*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            if row.get("train/loss"):
                out[int(row["step"])] = tuple(float(row[k]) for k in KEYS)
    return out


def test_server_mode_rewards_and_losses_equal_the_hf_engine(server, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    remote = fit(tmp_path / "server", "--model.init_args.engine", engine(server))
    local = fit(tmp_path / "local")
    assert len(remote) == len(local) == 2
    for step in local:
        assert remote[step] == pytest.approx(local[step], rel=1e-4, abs=1e-6)


def test_prefetch_trains_one_rollout_behind_and_resumes_exactly(server, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    checkpoint = {
        "class_path": "lit_swift.callbacks.hf_checkpoint.HFCheckpoint",
        "init_args": {"every_n_train_steps": 1, "save_top_k": -1, "save_hf": False},
    }
    common = ["--trainer.limit_val_batches", "0", "--trainer.callbacks", json.dumps([checkpoint])]
    prefetch = ["--model.init_args.engine", engine(server, prefetch=True), *common]
    local = fit(tmp_path / "local", "--trainer.max_steps", "1", *common)
    full = fit(tmp_path / "full", "--trainer.max_steps", "3", *prefetch)
    # 3 optimizer steps; the first batch only started generating (nothing logged for it)
    assert len(full) == 3 and min(full) == min(local) + 1
    # the first trained rollout is the first batch's, generated with the initial weights, as in sync mode
    assert full[min(full)] == pytest.approx(local[min(local)], rel=1e-4, abs=1e-6)

    part = tmp_path / "part"
    fit(part, "--trainer.max_steps", "2", *prefetch)
    saved = next(part.glob("lightning_logs/version_0/checkpoints/last.ckpt"))
    import torch

    state = torch.load(saved, map_location="cpu", weights_only=False)["grpo"]["in_flight"]
    assert state is not None and len(state["completions"]) == 4 * 4  # batch 4 prompts x 4 generations
    resumed = fit(part, "--trainer.max_steps", "3", "--ckpt_path", "last", *prefetch)
    last = max(full)
    assert sorted(resumed) == sorted(full)
    assert resumed[last] == pytest.approx(full[last], rel=1e-5, abs=1e-7)
