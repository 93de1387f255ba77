"""Every shipped YAML parses and instantiates; every objective config has a debug twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lit_swift.cli import run_trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {}))


def test_configs_exist():
    assert (CONFIGS / "quickstart.yaml") in RUN_CONFIGS and (CONFIGS / "debug" / "sft.yaml") in RUN_CONFIGS


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_and_instantiates(path, monkeypatch, tmp_path):
    monkeypatch.chdir(CONFIGS.parent)  # configs name data files relative to the repo root
    cli = run_trainer(["--config", str(path), "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None


def test_every_objective_config_has_a_debug_twin():
    debug = {p.stem for p in (CONFIGS / "debug").glob("*.yaml")}
    for folder in CONFIGS.iterdir():
        if folder.is_dir() and folder.name not in ("debug", "trainer"):
            assert any(name.startswith(folder.name) for name in debug), (
                f"configs/{folder.name} has no debug twin"
            )
