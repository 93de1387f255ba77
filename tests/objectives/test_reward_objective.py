"""Reward model: last-token scores on padded and packed batches, end-to-end fit, merged export reloads and scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lit_swift import tuners
from lit_swift.cli import main
from lit_swift.data.preference import PairItem, collate_pairs
from lit_swift.data.template import ChatEncoder
from lit_swift.objectives.reward import RewardModel

SMOLLM2 = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[2]
PAIRS = [("What is 2 + 3?", "5", "6"), ("Name a colour.", "Red.", "The number seven, which is a colour.")]


@pytest.fixture(scope="module")
def items(smollm2_tokenizer):
    enc = ChatEncoder(smollm2_tokenizer)

    def encode(prompt, answer):
        return enc.encode_completion(
            [{"role": "user", "content": prompt}], {"role": "assistant", "content": answer}
        )

    return [PairItem(encode(p, c), encode(p, r), margin=0.5) for p, c, r in PAIRS]


def test_scores_padded_equal_packed_and_head_trains(items):
    module = RewardModel(model=SMOLLM2, config_overrides={"num_hidden_layers": 2}, tuner=tuners.LoRA(r=4))
    module.configure_model()
    module.eval()
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad and "lora" not in n]
    assert trainable and all("score" in n for n in trainable)
    padded = collate_pairs(items, pad_id=2, packed=False, max_length=128)
    packed = collate_pairs(items, pad_id=2, packed=True, max_length=128)
    with torch.no_grad():
        a, b = module.scores(padded), module.scores(packed)
    assert a.shape == (4,)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    loss, metrics, num_pairs = module.loss_and_metrics(padded)
    assert num_pairs == 2 and math.isfinite(loss.item()) and "rewards/accuracy" in metrics


def test_fit_debug_reward_and_export_reloads_and_scores(tmp_path, monkeypatch, items):
    from transformers import AutoModelForSequenceClassification

    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/debug/reward.yaml", "--trainer.default_root_dir", str(tmp_path)])
    run = next(tmp_path.glob("lightning_logs/version_*"))
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    losses = [float(v) for line in lines[1:] if (v := line.split(",")[header.index("train/loss")])]
    assert losses and all(math.isfinite(x) for x in losses) and "val/accuracy" in header
    folder = run / "checkpoints" / "last.hf"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.num_labels == 1 and model.config.num_hidden_layers == 2
    with torch.no_grad():
        chosen = model(input_ids=torch.tensor([items[0].chosen.input_ids])).logits  # [1, 1]
        rejected = model(input_ids=torch.tensor([items[0].rejected.input_ids])).logits  # [1, 1]
    assert chosen.shape == rejected.shape == (1, 1)
    assert (
        torch.isfinite(chosen).all() and torch.isfinite(rejected).all() and chosen.item() != rejected.item()
    )
