"""Model resolution: the SmolLM2 alias materialises correctly, concurrently, and bad specs fail clearly.

Tokenizers are loaded once per process (memoised by spec and folder state).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from lit_swift import models


def test_alias_folder_passes_upstream_checks(smollm2_dir, smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok("Hello world").input_ids == [19556, 905]
    assert tok.eos_token_id == tok.pad_token_id == 2
    chat = [{"role": "user", "content": "Hi"}]
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
    assert prompt[:3] == [1, 9690, 198] and prompt[-4:] == [1, 520, 9531, 198]
    config = json.loads((Path(smollm2_dir) / "config.json").read_text())
    assert config["rope_theta"] == 100000.0 and "quantization_config" not in config
    assert json.loads((Path(smollm2_dir) / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )


def test_full_model_answers_like_upstream(smollm2_dir, smollm2_tokenizer):
    """Greedy answer of the full 30-layer model (proves weights, rope base and eos are right)."""
    tok = smollm2_tokenizer
    model = models.load_model("smollm2-135m-instruct")
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Name three colors."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer == "1. Red\n2. Blue\n3. Green"


def _materialise(cache: str) -> str:
    import os

    os.environ["LIT_SWIFT_CACHE"] = cache
    return str(models.materialise("smollm2-135m-instruct"))


@pytest.mark.slow
def test_two_processes_materialise_one_good_folder(tmp_path):
    with mp.get_context("spawn").Pool(2) as pool:
        paths = pool.map(_materialise, [str(tmp_path)] * 2)
    assert paths[0] == paths[1]
    folder = Path(paths[0])
    assert (folder / models.READY_MARKER).exists()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no leftover temp folders


def test_overrides_give_a_small_real_model():
    model = models.load_model("smollm2-135m-instruct", config_overrides={"num_hidden_layers": 2})
    assert len(model.model.layers) == 2 and model.config._attn_implementation == "sdpa"


def test_hub_id_offline_names_the_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="smollm2-135m-instruct") as err:
        models.resolve("someone/not-a-local-model")
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_missing_path_and_gpu_only_switches_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        models.resolve(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no config.json"):
        models.resolve(str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flash"):
            models.check_attn_implementation("flash_attention_2")


def test_load_tokenizer_is_shared_per_spec_and_folder_state(tmp_path, smollm2_dir):
    first = models.load_tokenizer("smollm2-135m-instruct")
    assert models.load_tokenizer("smollm2-135m-instruct") is first
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_bytes((Path(smollm2_dir) / name).read_bytes())
    copied = models.load_tokenizer(str(folder))
    assert copied is not first and models.load_tokenizer(str(folder)) is copied
    template = folder / "chat_template.jinja"
    template.write_text(template.read_text() + "\n")  # rewritten in place: loaded afresh
    rewritten = models.load_tokenizer(str(folder))
    assert rewritten is not copied and rewritten.chat_template.endswith("\n")
