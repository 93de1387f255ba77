"""Reranker objective: the debug config end to end and an export that reloads to the same scores."""

import csv
import math
from pathlib import Path

import torch
from torch.testing import assert_close

from lit_swift.objectives.reranker import Reranker
from lit_swift.tuners import LoRA

ROOT = Path(__file__).resolve().parents[2]


def test_debug_config_fits_end_to_end(tmp_path, monkeypatch):
    from lit_swift.cli import main

    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/debug/reranker.yaml", "--trainer.default_root_dir", str(tmp_path)])
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert any(r.get("val/mrr") for r in rows)
    assert (next(tmp_path.rglob("last.hf")) / "config.json").exists()


def test_export_reloads_to_same_scores(tmp_path):
    from transformers import AutoModelForSequenceClassification

    module = Reranker("all-minilm-l6-v2", config_overrides={"num_hidden_layers": 2}, tuner=LoRA(r=4))
    module.configure_model()
    with torch.no_grad():
        for name, param in module.model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                param.normal_(std=0.05)
    module.model.eval()
    pairs = module.tokenizer(
        ["What is AI?", "What is AI?"],
        ["Machines that think.", "I like pizza."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = module.score(dict(pairs) | {"labels": torch.zeros(1, 2)})  # [1, 2]
        loaded = AutoModelForSequenceClassification.from_pretrained(
            module.save_hf(tmp_path / "export")
        ).eval()
        scores = loaded(**pairs).logits.view(1, 2)
    assert loaded.config.num_labels == 1
    assert_close(scores, expected, atol=1e-5, rtol=1e-4)
