"""Untrusted files run no code: a planted `.ckpt` is refused by `lit-swift export` (weights-only load), and
a model folder's custom code (`auto_map`, `trust_remote_code`) is never imported (issue 13, item 8)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from lit_swift import models
from lit_swift.cli import main

ROOT = Path(__file__).resolve().parents[2]


class Planted:
    """Unpickling this runs a shell command: what a downloaded malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_export_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys):
    # main before: torch.load(weights_only=False) ran the planted command while loading
    marker = tmp_path / "ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Planted(marker)}, ckpt)
    run_config = ROOT / "configs/debug/sft.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--run_config",
                str(run_config),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
    assert exit_info.value.code == 2
    assert re.search(
        r"evil.ckpt holds Python objects that could run code .*posix.system", capsys.readouterr().err
    )
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_model_folders_custom_code_is_not_run(tmp_path, smollm2_dir):
    folder = tmp_path / "remote-code-model"
    folder.mkdir()
    config = json.loads((Path(smollm2_dir) / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "imported"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "model.safetensors").symlink_to(Path(smollm2_dir) / "model.safetensors")
    model = models.load_model(str(folder), config_overrides={"num_hidden_layers": 1})
    assert type(model).__module__.startswith("transformers.models.llama")  # the library's class, not evil.py
    assert not marker.exists()


def test_remote_code_runs_only_when_the_user_opts_in(tmp_path, smollm2_dir, monkeypatch):
    folder = tmp_path / "remote-code-model"
    folder.mkdir()
    config = json.loads((Path(smollm2_dir) / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "imported"
    (folder / "custom.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n    pass\n"
    )
    (folder / "model.safetensors").symlink_to(Path(smollm2_dir) / "model.safetensors")
    monkeypatch.setenv(models.TRUST_REMOTE_CODE_ENV, "1")
    with pytest.raises(ValueError, match="CustomConfig"):  # its config class has no causal-LM mapping
        models.load_model(str(folder), config_overrides={"num_hidden_layers": 1})
    assert marker.exists()  # the folder's own code ran, because the user asked for it
