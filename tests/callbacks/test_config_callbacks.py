"""The shipped run configs watch training: LR monitor (also in the progress bar), throughput, and early
stopping on a validation metric their objective really logs."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RUN_CONFIGS = sorted(
    p
    for folder in ("sft", "dpo", "kto", "reward", "embedding", "reranker")
    for p in (CONFIGS / folder).glob("*.yaml")
)


def load_class(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_every_objective_folder_has_run_configs():
    assert {p.parent.name for p in RUN_CONFIGS} == {"sft", "dpo", "kto", "reward", "embedding", "reranker"}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_run_config_monitors_lr_throughput_and_stops_early_on_a_logged_metric(path):
    config = yaml.safe_load(path.read_text())
    callbacks = {c["class_path"]: c.get("init_args") or {} for c in config["trainer"]["callbacks"]}
    assert callbacks["lit_swift.callbacks.progress.LearningRateMonitor"] == {"logging_interval": "step"}
    assert "lit_swift.callbacks.throughput.Throughput" in callbacks

    data = config["data"]["init_args"]
    assert data.get("val_dataset") or data.get("val_split", 0) > 0, "every shipped run config validates"
    stop = callbacks["lightning.pytorch.callbacks.EarlyStopping"]
    objective = load_class(config["model"]["class_path"])
    source = "".join(inspect.getsource(c) for c in objective.__mro__ if c.__module__.startswith("lit_swift"))
    # logged by a `self.log` on every rank (a rank-zero-only metric would let the ranks stop apart)
    logged = rf'self\.log\(\s*"{re.escape(stop["monitor"])}"(?![^\n]*rank_zero_only=True)'
    assert re.search(logged, source), f"{objective.__name__} does not log {stop['monitor']} on every rank"
    assert stop["mode"] == "min" and stop["patience"] >= 2
    # checked after each validation only: a run that max_steps ends mid-epoch has no val metric
    assert stop.get("check_on_train_epoch_end") is False
