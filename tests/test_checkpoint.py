"""Checkpoints: lean LoRA `.ckpt` with full training state, loadable `.hf` folders (adapter and full),
YAML-configured saving, atomic writes under a crash, and LoRA resume with `strict_loading=False`."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lit_swift.callbacks.hf_checkpoint import HFCheckpoint, hf_folder
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from lit_swift import tuners
from lit_swift.cli import main
from lit_swift.data.datamodule import SFTDataModule
from lit_swift.objectives.sft import SFT

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "data/quickstart/identity.jsonl#8")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    """A tiny random Llama with SmolLM2's tokenizer, saved as a model folder (fast to load and save)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return str(folder)


def fit(spec: str, tuner: tuners.Tuner, root: Path, max_steps: int, ckpt_path: str | None = None):
    L.seed_everything(0)
    model = SFT(spec, tuner=tuner, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    data = SFTDataModule(spec, DATA, max_length=64, batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=[HFCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, model


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-run")
    trainer, model = fit(tiny_dir, tuners.LoRA(r=4, alpha=8, dropout=0.0), root, max_steps=2)
    return root, trainer, model


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(3, 19).view(2, 8)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_lora_ckpt_holds_only_adapters_and_full_training_state(lora_run):
    root, _, model = lora_run
    ckpt = torch.load(root / "last.ckpt", map_location="cpu", weights_only=False)
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == lora and all("lora_" in k for k in lora)
    assert ckpt["optimizer_states"] and ckpt["optimizer_states"][0]["state"]
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 2
    # saved after epoch 0's 2nd (last) batch: a resume continues at the start of epoch 1
    assert ckpt["SFTDataModule"] == {"epoch": 1, "batches_done": 0}
    assert "rng" in ckpt and ckpt["global_step"] == 2


def test_lora_hf_folder_loads_with_peft_and_matches(lora_run, tiny_dir):
    from peft import PeftModel

    root, _, model = lora_run
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(root / "last.hf"))
    torch.testing.assert_close(logits(loaded), logits(model.model))
    with loaded.disable_adapter():
        assert not torch.allclose(logits(loaded), logits(model.model))  # the trained adapter matters


def test_full_hf_folder_loads_with_transformers(tiny_dir, tmp_path):
    _, model = fit(tiny_dir, tuners.Full(), tmp_path, max_steps=1)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "last.hf")
    torch.testing.assert_close(logits(loaded), logits(model.model))
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert len(ckpt["state_dict"]) == len(list(model.parameters()))


def test_resume_loads_adapters_from_ckpt_and_base_from_spec(lora_run, tiny_dir, tmp_path):
    root, _, _ = lora_run
    saved = torch.load(root / "epoch=0-step=2.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    _, resumed = fit(
        tiny_dir, tuners.LoRA(r=4, alpha=8, dropout=0.0), tmp_path, 2, str(root / "epoch=0-step=2.ckpt")
    )
    params = dict(resumed.named_parameters())
    for name, value in saved.items():
        torch.testing.assert_close(params[name], value, rtol=0, atol=0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    q_proj = resumed.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    torch.testing.assert_close(q_proj, base["model.layers.0.self_attn.q_proj.weight"], rtol=0, atol=0)


def test_crash_mid_save_keeps_previous_checkpoint(lora_run, tiny_dir, monkeypatch):
    from peft import PeftModel

    root, trainer, _ = lora_run
    callback = next(c for c in trainer.callbacks if isinstance(c, HFCheckpoint))
    last = root / "last.ckpt"
    before = last.read_bytes()

    def partial_save(checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(trainer.strategy.checkpoint_io, "save_checkpoint", partial_save)
    with pytest.raises(OSError, match="disk full"):
        callback._save_checkpoint(trainer, str(last))
    monkeypatch.undo()

    def broken_tokenizer_save(*args, **kwargs):
        raise OSError("killed while writing the HF folder")

    monkeypatch.setattr(trainer.lightning_module.tokenizer, "save_pretrained", broken_tokenizer_save)
    with pytest.raises(OSError, match="killed while writing"):
        callback._save_checkpoint(trainer, str(last))

    assert last.read_bytes() == before
    torch.load(last, map_location="cpu", weights_only=False)
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(hf_folder(last)))


def test_save_top_k_and_every_n_train_steps_from_yaml(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load((ROOT / "configs/debug/sft.yaml").read_text())
    config["trainer"].update(max_steps=6, default_root_dir=str(tmp_path))
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lit_swift.callbacks.hf_checkpoint.HFCheckpoint",
            "init_args": {
                "every_n_train_steps": 2,
                "save_top_k": 2,
                "monitor": "step",
                "mode": "max",
                "dirpath": str(tmp_path / "ckpt"),
            },
        }
    ]
    config["model"]["init_args"].update(model=tiny_dir, config_overrides=None)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == [
        "epoch=1-step=4.ckpt",
        "epoch=1-step=4.hf",
        "epoch=2-step=6.ckpt",
        "epoch=2-step=6.hf",
        "last.ckpt",
        "last.hf",
    ]
