"""Embedding objective: pooling on literal tensors, the debug config end to end, export round trip."""

import csv
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from lit_swift.objectives.embedding import Embedding, pool
from lit_swift.tuners import LoRA

ROOT = Path(__file__).resolve().parents[2]


def test_pool_mean_cls_last_with_padding():
    hidden = torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])[..., None]  # [B=2, T=3, H=1]
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # row 0 right-padded, row 1 left-padded
    assert_close(pool(hidden, mask, "mean"), torch.tensor([[1.5], [6.5]]))
    assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0], [6.0]]))
    assert_close(pool(hidden, mask, "last"), torch.tensor([[2.0], [7.0]]))


def test_debug_config_fits_end_to_end(tmp_path, monkeypatch):
    from lit_swift.cli import main

    monkeypatch.chdir(ROOT)
    main(["fit", "--config", "configs/debug/embedding.yaml", "--trainer.default_root_dir", str(tmp_path)])
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert any(r.get("val/recall@1") for r in rows) and any(r.get("val/ndcg@10") for r in rows)
    assert (next(tmp_path.rglob("last.hf")) / "modules.json").exists()


def test_export_reloads_to_same_vectors(tmp_path):
    from transformers import AutoModel

    module = Embedding("all-minilm-l6-v2", config_overrides={"num_hidden_layers": 2}, tuner=LoRA(r=4))
    module.configure_model()
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter so merging is tested
        for name, param in module.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    module.model.eval()
    texts = ["What is AI?", "A branch of engineering devoted to machines that think."]
    tokens = module.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = module.embed({f"query_{k}": v for k, v in tokens.items()}, "query")
    folder = module.save_hf(tmp_path / "export")
    assert not any("lora" in n for n, _ in AutoModel.from_pretrained(folder).named_parameters())
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(folder).eval()(**tokens).last_hidden_state
    plain = torch.nn.functional.normalize(pool(hidden, tokens["attention_mask"], "mean"), dim=-1)
    assert_close(plain, expected, atol=1e-5, rtol=1e-4)
    st = pytest.importorskip("sentence_transformers")
    vectors = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    assert_close(vectors, expected, atol=1e-5, rtol=1e-4)
