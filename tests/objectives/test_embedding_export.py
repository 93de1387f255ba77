"""Embedding exports stay what they were trained as (issue 13, item 10): `lit-swift export` of a `.ckpt`
keeps the sentence-transformers files, so sentence-transformers reproduces the objective's vectors for
every pooling mode; the base model's `max_seq_length` survives; rows without negatives get a fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.testing import assert_close

from lit_swift.cli import main
from lit_swift.data.embedding import EmbeddingDataModule
from lit_swift.objectives.embedding import Embedding

MINILM = "all-minilm-l6-v2"
TWO_LAYERS = {"num_hidden_layers": 2}
TEXTS = ["What is AI?", "A branch of engineering devoted to machines that think.", "Hi"]


def trained_checkpoint(folder: Path, pooling: str) -> tuple[Path, Path, torch.Tensor]:
    """A `.ckpt` + run config of an Embedding objective with perturbed weights, and its vectors of TEXTS."""
    module = Embedding(MINILM, pooling=pooling, config_overrides=TWO_LAYERS)
    module.configure_model()
    torch.manual_seed(0)
    with torch.no_grad():  # weights unlike the base model's, so the export must carry them
        for param in module.model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    module.model.eval()
    tokens = module.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = module.embed({f"query_{k}": v for k, v in tokens.items()}, "query")
    ckpt = folder / "last.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    config = {
        "model": {
            "class_path": "lit_swift.objectives.embedding.Embedding",
            "init_args": {"model": MINILM, "pooling": pooling, "config_overrides": TWO_LAYERS},
        }
    }
    run_config = folder / "config.yaml"
    run_config.write_text(yaml.safe_dump(config))
    return ckpt, run_config, expected


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_exported_checkpoint_reloads_in_sentence_transformers_with_the_same_vectors(tmp_path, pooling):
    # main before: the export had no modules.json, so sentence-transformers fell back to unnormalised
    # mean pooling: other vectors for `cls`/`last`, unnormalised for all three
    from sentence_transformers import SentenceTransformer

    ckpt, run_config, expected = trained_checkpoint(tmp_path, pooling)
    out = tmp_path / "export"
    main(["export", "--checkpoint", str(ckpt), "--run_config", str(run_config), "--output_dir", str(out)])
    assert (out / "modules.json").exists() and (out / "1_Pooling" / "config.json").exists()
    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 256  # the base model's, not a training max_length
    vectors = model.encode(TEXTS, convert_to_tensor=True)
    assert_close(vectors, expected, atol=1e-5, rtol=1e-4)


def test_hf_folder_records_the_base_models_max_seq_length(tmp_path):
    # main before: `last.hf` recorded the DataModule's training max_length (64 in configs/embedding)
    module = Embedding(MINILM, config_overrides=TWO_LAYERS)
    module.configure_model()
    folder = module.save_hf(tmp_path / "last.hf")
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 256


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_missing_negatives_name_the_fix_and_validation_rows_need_none(tmp_path):
    pairs = [{"query": f"q{i}", "positive": f"p{i}"} for i in range(4)]
    triplets = [{"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}"]} for i in range(4)]
    # main before: a bare "row(s) have no negatives" that does not say how to train on such rows
    data = EmbeddingDataModule(MINILM, write_rows(tmp_path / "pairs.jsonl", pairs), num_negatives=1)
    with pytest.raises(ValueError, match=r"pairs.jsonl:1.*set `num_negatives: 0`"):
        data.setup("fit")
    # main before: validation pairs without negatives were refused as well
    data = EmbeddingDataModule(
        MINILM,
        write_rows(tmp_path / "train.jsonl", triplets),
        val_dataset=write_rows(tmp_path / "val.jsonl", pairs),
        num_negatives=1,
        batch_size=2,
    )
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    assert batch["query_input_ids"].shape[0] == 2 and batch["doc_input_ids"].shape[0] == 2
    assert next(iter(data.train_dataloader()))["doc_input_ids"].shape[0] == 4  # positives + 1 negative each
