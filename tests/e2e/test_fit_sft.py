"""End to end: `lit-swift fit` on the debug SFT config gives finite, falling loss and a loadable adapter."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from lit_swift import models
from lit_swift.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("debug-sft")
    main(["fit", "--config", str(ROOT / "configs/debug/sft.yaml"), "--trainer.default_root_dir", str(out)])
    return next(out.glob("lightning_logs/version_*"))


def test_loss_is_finite_and_falls(run_dir):
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) < sum(losses[:2])


def test_checkpoint_and_adapter_folder(run_dir):
    from peft import PeftModel

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    adapter = run_dir / "checkpoints" / "last.hf"
    assert ckpt.exists() and (adapter / "adapter_config.json").exists()
    assert (adapter / "tokenizer.json").exists() and (adapter / "lit_swift_config.yaml").exists()
    base = models.load_model("smollm2-135m-instruct", config_overrides={"num_hidden_layers": 2})
    model = PeftModel.from_pretrained(base, str(adapter))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained (B starts at zero)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)


@pytest.mark.slow
def test_quickstart_teaches_the_identity(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/quickstart.yaml", "--trainer.default_root_dir", str(tmp_path)])
    after = capsys.readouterr().out.split("=== answers after training ===")[1]
    assert "Lit" in after and "lit-swift" in after
