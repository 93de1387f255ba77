"""KTO objective: policy equals reference at LoRA init (loss 0.5, z0 0), frozen copy for full tuning, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lit_swift import tuners
from lit_swift.cli import main
from lit_swift.data.preference import KTOItem, collate_kto
from lit_swift.data.template import ChatEncoder
from lit_swift.objectives.kto import KTO
from lit_swift.types import IGNORE_INDEX

SMOLLM2 = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def batch(smollm2_tokenizer):
    enc = ChatEncoder(smollm2_tokenizer)
    rows = [("What is 2 + 3?", "5", True), ("What is 4 - 1?", "2", False), ("Say hi.", "Hi!", True)]
    items = []
    for prompt, answer, label in rows:
        sample = enc.encode_completion(
            [{"role": "user", "content": prompt}], {"role": "assistant", "content": answer}
        )
        items.append(
            KTOItem(sample, sample.labels.index(next(x for x in sample.labels if x != IGNORE_INDEX)), label)
        )
    return collate_kto(items, pad_id=2, packed=False, max_length=256)


def test_lora_kto_at_init_policy_equals_reference(batch):
    """LoRA B = 0 at init: every log ratio is 0, z0 = 0, so each row costs 1 - sigma(0) = 0.5."""
    module = KTO(
        model=SMOLLM2, config_overrides={"num_hidden_layers": 2}, tuner=tuners.LoRA(r=4, dropout=0.0)
    )
    module.configure_model()
    assert module.reference is None
    logps = module.kto_logps(batch)
    assert logps.policy.shape == logps.policy_kl.shape == (3,)
    torch.testing.assert_close(logps.policy, logps.reference, atol=1e-4, rtol=0)
    loss, metrics = module.loss(logps)
    assert math.isclose(loss.item(), 0.5, abs_tol=1e-4) and metrics["kl"].item() == 0.0
    loss.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters() if p.requires_grad
    )


def test_full_kto_uses_a_frozen_copy(batch):
    module = KTO(model=SMOLLM2, config_overrides={"num_hidden_layers": 1}, tuner=tuners.Full())
    module.configure_model()
    assert module.reference is not None and not any(p.requires_grad for p in module.reference.parameters())
    optimizer = torch.optim.SGD(module.model.parameters(), lr=1e-2)
    module.loss(module.kto_logps(batch))[0].backward()
    optimizer.step()
    logps = module.kto_logps(batch)
    assert (logps.policy - logps.reference).abs().max() > 0


def test_fit_debug_kto(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/debug/kto.yaml", "--trainer.default_root_dir", str(tmp_path)])
    run = next(tmp_path.glob("lightning_logs/version_*"))
    assert (run / "checkpoints" / "last.hf" / "adapter_config.json").exists()
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    losses = [float(v) for line in lines[1:] if (v := line.split(",")[header.index("train/loss")])]
    assert losses and all(math.isfinite(x) for x in losses)
    assert "val/loss" in header and "train/kl" in header
