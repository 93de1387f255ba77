"""Export: merged folders reproduce the adapter model's logits and reload with plain transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lit_swift import models, tuners
from lit_swift.cli import main
from lit_swift.export.merge import export

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = "smollm2-135m-instruct"
TWO_LAYERS = {"num_hidden_layers": 2}
INPUT_IDS = torch.tensor([[1, 9690, 198, 19556, 905, 2, 198, 520]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=INPUT_IDS).logits  # [1, T, V]


def adapter_model(folder: Path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(models.load_model(SMOLLM2, config_overrides=TWO_LAYERS), str(folder))


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A LoRA adapter whose B matrices are random (so it changes the output), and its model's logits."""
    torch.manual_seed(0)
    model = tuners.LoRA(r=4, alpha=8, dropout=0.0).apply(
        models.load_model(SMOLLM2, config_overrides=TWO_LAYERS)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(str(folder))
    models.load_tokenizer(SMOLLM2).save_pretrained(str(folder))
    return folder, logits(model)


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", str(ROOT / "configs/debug/sft.yaml"), "--trainer.default_root_dir", str(out)])
    return next(out.glob("lightning_logs/version_*"))


def test_merged_export_matches_adapter_and_reloads_with_transformers(lora_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, expected = lora_folder
    base = logits(models.load_model(SMOLLM2, config_overrides=TWO_LAYERS))
    assert not torch.allclose(base, expected, atol=1e-3)  # the adapter matters
    out = export(
        str(folder),
        str(tmp_path / "merged"),
        merge_lora=True,
        max_shard_size="100MB",
        config_overrides=TWO_LAYERS,
    )
    assert (out / "model.safetensors.index.json").exists() and len(list(out.glob("*.safetensors"))) >= 2
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert merged.config.num_hidden_layers == 2
    torch.testing.assert_close(logits(merged), expected, atol=1e-4, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no temporary folder left behind


def test_unmerged_export_is_a_peft_folder(lora_folder, tmp_path):
    folder, expected = lora_folder
    out = export(str(folder), str(tmp_path / "adapter"), config_overrides=TWO_LAYERS)
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists()
    # `expected` came from grouped q/k/v and gate/up matmuls (lit_swift.lora_groups), peft runs them one by
    # one: float32 rounding of logits up to ~70 differs by a few ulps (equal in float64)
    torch.testing.assert_close(logits(adapter_model(out)), expected, atol=1e-4, rtol=0)


def test_bfloat16_export(lora_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export(
        str(lora_folder[0]),
        str(tmp_path / "bf16"),
        merge_lora=True,
        dtype="bfloat16",
        config_overrides=TWO_LAYERS,
    )
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(str(out)).dtype == torch.bfloat16


def test_export_from_lightning_checkpoint_via_cli(fit_run, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt = fit_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "merged"
    main(["export", "--checkpoint", str(ckpt), "--merge_lora", "true", "--output_dir", str(out)])
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert merged.config.num_hidden_layers == 2  # the run's config_overrides travel with the export
    expected = logits(adapter_model(fit_run / "checkpoints" / "last.hf"))
    torch.testing.assert_close(logits(merged), expected, atol=1e-4, rtol=0)
    assert "smollm2-135m-instruct" in (out / "lit_swift_config.yaml").read_text()


def test_export_adapter_from_hf_folder_keeps_the_run_config(fit_run, tmp_path):
    out = export(str(fit_run / "checkpoints" / "last.hf"), str(tmp_path / "adapter"))
    assert (out / "adapter_config.json").exists() and (out / "lit_swift_config.yaml").exists()


def test_bad_inputs_raise_clear_errors(lora_folder, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        export(str(tmp_path / "missing.ckpt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither an adapter folder"):
        export(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no resolved config"):
        torch.save({"state_dict": {}}, tmp_path / "lonely.ckpt")
        export(str(tmp_path / "lonely.ckpt"))
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        export(str(lora_folder[0]), str(tmp_path / "empty"), config_overrides=TWO_LAYERS)
