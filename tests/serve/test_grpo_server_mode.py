"""GRPO in `server` mode: the debug run against a `lit-swift rollout` process on CPU gives the same
rewards and losses as the in-process HF engine (same seed, same per-completion sampling seeds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lit_swift.cli import main
from tests.serve.helpers import free_port, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = "smollm2-135m-instruct"


def fit(root: Path, *extra: str) -> list[dict]:
    main(["fit", "--config", "configs/debug/grpo.yaml", "--trainer.default_root_dir", str(root), *extra])
    version = next(root.glob("lightning_logs/version_*"))
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    return [{k: float(r[k]) for k in ("train/reward", "train/loss")} for r in rows if r.get("train/loss")]


@pytest.mark.slow
def test_server_mode_rewards_and_losses_equal_the_hf_engine(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    port = free_port()
    args = ["rollout", "--model", SMOLLM2, "--backend", "hf", "--config_overrides", "{num_hidden_layers: 2}"]
    proc = start_server([*args, "--dtype", "float32", "--device", "cpu", "--port", str(port)], port)
    engine = {
        "class_path": "lit_swift.rollout.remote.ServerEngine",
        "init_args": {"url": f"http://127.0.0.1:{port}"},
    }
    try:
        remote = fit(tmp_path / "server", "--model.init_args.engine", json.dumps(engine))
    finally:
        stop_server(proc)
    local = fit(tmp_path / "local")
    assert len(remote) == len(local) == 2
    for r, h in zip(remote, local, strict=True):
        assert r == pytest.approx(h, rel=1e-4, abs=1e-6)
