"""VLMSFT: freeze switches, per-part learning rates, pixels reaching the vision tower, packed == unpacked loss."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lit_swift import tuners
from lit_swift.data.multimodal import IMAGE_INPUTS, MultimodalDataModule
from lit_swift.objectives.vlm import PARTS, VLMSFT, part_of

MODEL = "llava-smollm2-tiny"
SMALL = {"text_config": {"num_hidden_layers": 2}}


def make(tuner=None, **kwargs) -> VLMSFT:
    objective = VLMSFT(
        model=MODEL, config_overrides=SMALL, tuner=tuner or tuners.LoRA(r=4, dropout=0.0), **kwargs
    )
    objective.configure_model()
    return objective


def trainable_by_part(objective: VLMSFT) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for name, param in objective.model.named_parameters():
        if param.requires_grad:
            parts.setdefault(part_of(name, objective.parts), set()).add(name)
    return parts


def num_params(objective: VLMSFT, part: str) -> int:
    """Parameters of a part, counted once (peft keeps a frozen original beside a module it trains in full)."""
    base = tuners.base_model(objective.model)
    return sum(
        p.numel()
        for n, p in base.named_parameters()
        if part_of(n, objective.parts) == part and "modules_to_save" not in n
    )


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name, colour in (("r.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (36, 28), colour).save(folder / name)
    records = [
        {"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}],
         "images": ["r.png"]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]},
        {"messages": [{"role": "user", "content": "And this?"}, {"role": "assistant", "content": "blue"}],
         "images": ["b.png"]},
    ]  # fmt: skip
    path = folder / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def batch_of(data_file: Path, packing: bool) -> dict:
    dm = MultimodalDataModule(
        tokenizer=MODEL, dataset=str(data_file), batch_size=3, shuffle=False, packing=packing, max_length=256
    )
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def test_default_lora_adapts_only_the_language_model():
    objective = make()
    parts = trainable_by_part(objective)
    assert set(parts) == {"llm"} and all("lora_" in n for n in parts["llm"])
    adapted = {n.split(".lora_")[0] for n in parts["llm"]}
    assert any("language_model.layers.0.self_attn.q_proj" in n for n in adapted)
    assert not any("lm_head" in n for n in adapted)


def test_unfrozen_vision_and_aligner_train_in_full_beside_lora():
    objective = make(freeze_vision=False, freeze_aligner=False)
    parts = trainable_by_part(objective)
    assert set(parts) == {"llm", "vision", "aligner"}
    assert all("lora_" in n for n in parts["llm"])
    for part in ("vision", "aligner"):
        trained = sum(p.numel() for n, p in objective.model.named_parameters() if n in parts[part])
        assert trained == num_params(objective, part) and all("modules_to_save" in n for n in parts[part])


def test_full_tuner_with_frozen_llm_trains_exactly_the_vision_tower():
    objective = make(tuner=tuners.Full(), freeze_llm=True, freeze_vision=False, freeze_aligner=True)
    parts = trainable_by_part(objective)
    assert set(parts) == {"vision"}
    trained = sum(p.numel() for p in objective.model.parameters() if p.requires_grad)
    assert trained == num_params(objective, "vision")


def test_lora_with_frozen_llm_or_no_target_is_refused():
    with pytest.raises(ValueError, match="freeze_llm with a LoRA tuner leaves LoRA nothing to adapt"):
        make(freeze_llm=True, freeze_vision=False)
    with pytest.raises(
        ValueError, match=r"target_modules \['fc1'\] match no linear layer of the language model"
    ):
        make(tuner=tuners.LoRA(target_modules=["fc1"]))  # fc1 exists only in the vision tower


def test_lora_target_names_select_language_model_layers_only():
    objective = make(tuner=tuners.LoRA(r=2, target_modules=["q_proj", "out_proj"]))
    adapted = {n.split(".lora_")[0] for n, p in objective.model.named_parameters() if p.requires_grad}
    assert adapted and all(n.endswith("self_attn.q_proj") and "language_model" in n for n in adapted)


def test_each_part_gets_its_learning_rate():
    objective = make(freeze_vision=False, freeze_aligner=False, vision_lr=0.01, aligner_lr=0.02)
    groups = {g["part"]: g for g in objective.tuner.param_groups(objective.model)}
    assert groups["vision"]["lr"] == 0.01 and groups["aligner"]["lr"] == 0.02 and "lr" not in groups["llm"]
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "lr_scale"} for g in groups.values()], lr=1e-3
    )
    assert sorted(g["lr"] for g in optimizer.param_groups) == [1e-3, 0.01, 0.02]


def test_processor_pixel_values_reach_the_vision_tower_unchanged(data_file):
    objective = make()
    batch = batch_of(data_file, packing=False)
    seen = []
    tower = tuners.base_model(objective.model).model.vision_tower
    handle = tower.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("pixel_values", args[0] if args else None)),
        with_kwargs=True,
    )
    objective.nll_sum(batch)
    handle.remove()
    processor = objective_processor()
    folder = data_file.parent
    expected = processor.image_processor(
        [Image.open(folder / "r.png"), Image.open(folder / "b.png")], return_tensors="pt"
    )["pixel_values"]
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(batch[IMAGE_INPUTS]["pixel_values"], expected, rtol=0, atol=0)


def objective_processor():
    from lit_swift.data.multimodal import load_processor

    return load_processor(MODEL)


def test_packed_and_padded_batches_give_the_same_loss(data_file):
    objective = make(freeze_vision=False, freeze_aligner=False).eval()
    with torch.no_grad():
        padded = objective.nll_sum(batch_of(data_file, packing=False))
        packed_batch = batch_of(data_file, packing=True)
        assert packed_batch["input_ids"].shape[0] == 1  # all three samples in one row
        packed = objective.nll_sum(packed_batch)
    assert padded[1] == packed[1]
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-4)


def test_packing_is_refused_for_families_without_1d_positions():
    objective = VLMSFT(model=MODEL)
    objective.parts = PARTS["qwen2_vl"]
    objective._trainer = SimpleNamespace(datamodule=SimpleNamespace(packing=True))
    with pytest.raises(ValueError, match="set data packing: false"):
        objective.on_fit_start()
    objective.parts = PARTS["llava"]
    objective.on_fit_start()
