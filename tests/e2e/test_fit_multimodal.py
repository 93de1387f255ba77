"""End to end: `lit-swift fit` on the multimodal debug twin, then export (merge) and `lit-swift infer --images`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from lit_swift.cli import main
from lit_swift.data.multimodal import IMAGE_INPUTS, MultimodalDataModule
from lit_swift.export.merge import load_trained

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("debug-multimodal")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the config names its data relative to the repo root
        main(["fit", "--config", "configs/debug/multimodal.yaml", "--trainer.default_root_dir", str(out)])
    return next(out.glob("lightning_logs/version_*"))


@pytest.fixture(scope="module")
def merged(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "merged"
    main(["export", "--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), "--merge_lora", "true",
          "--output_dir", str(out)])  # fmt: skip
    return out


def test_loss_is_finite_and_falls(run_dir):
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


def test_merged_export_reloads_with_auto_classes_and_gives_the_checkpoint_logits(
    run_dir, merged, monkeypatch
):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    monkeypatch.chdir(ROOT)
    processor = AutoProcessor.from_pretrained(str(merged))
    exported = AutoModelForImageTextToText.from_pretrained(str(merged)).eval()
    assert type(processor).__name__ == "LlavaProcessor" and len(exported.model.language_model.layers) == 2
    trained = load_trained(str(run_dir / "checkpoints" / "last.ckpt")).model.eval()
    dm = MultimodalDataModule(
        tokenizer="llava-smollm2-tiny", dataset="data/multimodal/val.jsonl#3", batch_size=3
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        **batch[IMAGE_INPUTS],
    }
    with torch.no_grad():
        torch.testing.assert_close(exported(**inputs).logits, trained(**inputs).logits, rtol=1e-4, atol=1e-4)
    # the vision tower trained (freeze_vision: false): the export differs from the assembled start
    start = AutoModelForImageTextToText.from_pretrained(dm.processor.tokenizer.name_or_path)
    before = {n: p for n, p in start.named_parameters() if "vision_tower" in n}
    after = {n: p for n, p in exported.named_parameters() if "vision_tower" in n}
    assert before.keys() == after.keys() and not all(torch.equal(before[n], after[n]) for n in before)


def test_infer_answers_about_an_image(merged, tmp_path, capsys, monkeypatch):
    from lit_swift.export.infer import infer

    monkeypatch.chdir(ROOT)
    image = "data/multimodal/red_circle.png"  # the picture docs/multimodal.md asks about
    main(["infer", "--model", str(merged), "--prompt", "What colour is the shape?", "--images", f"[{image}]",
          "--max_new_tokens", "4"])  # fmt: skip
    printed = capsys.readouterr().out.strip()
    answers = infer(
        model=str(merged), prompt="What colour is the shape?", images=[str(image)], max_new_tokens=4
    )
    assert answers == [printed.splitlines()[-1]]
    with pytest.raises(ValueError, match=r"--images: image '.*gone.png' not found"):
        infer(model=str(merged), prompt="?", images=[str(tmp_path / "gone.png")])
    assert Image.open(image).size == (32, 32)
