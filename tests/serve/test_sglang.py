"""SGLang pieces that run without SGLang (argument building, merged weights, the clear error, the
GPU script's dry run) and the colocate engine itself on a GPU with sglang installed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_swift import models, tuners
from lit_swift.rollout import sglang
from lit_swift.rollout.engine import Request, SamplingParams
from lit_swift.serve.deploy import deploy

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = "smollm2-135m-instruct"
TWO_LAYERS = {"num_hidden_layers": 2}


@pytest.fixture(scope="module")
def lora_model():
    torch.manual_seed(0)
    model = tuners.LoRA(r=4, alpha=8, dropout=0.0).apply(
        models.load_model(SMOLLM2, config_overrides=TWO_LAYERS)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    return model


@pytest.mark.skipif(sglang.available() is None, reason="SGLang can run here")
def test_sglang_backend_without_cuda_or_sglang_is_one_clear_line():
    with pytest.raises(ValueError, match="needs a CUDA GPU with SGLang installed") as err:
        deploy(model=SMOLLM2, backend="sglang")
    assert "\n" not in str(err.value)


def test_server_args_serve_the_adapter_through_sglang_lora(lora_model, tmp_path):
    folder = tmp_path / "my-adapter"
    lora_model.save_pretrained(str(folder))
    args = sglang.server_args(SMOLLM2, str(folder), None, "0.0.0.0", 8001, "k", None, ["--tp", "2"])
    assert args[1:3] == ["-m", "sglang.launch_server"]
    assert args[args.index("--model-path") + 1] == models.resolve(SMOLLM2)
    assert args[args.index("--lora-paths") + 1] == f"my-adapter={folder.resolve()}"
    assert ["--port", "8001"] == args[args.index("--port") : args.index("--port") + 2]
    assert args[args.index("--api-key") + 1] == "k" and args[-2:] == ["--tp", "2"]
    with pytest.raises(ValueError, match="--template applies to --backend hf"):
        sglang.server_args(SMOLLM2, None, "chatml", "h", 1, None, None, None)


def test_merged_weights_are_the_plain_model_names_with_lora_folded_in(lora_model):
    before = {n: p.detach().clone() for n, p in lora_model.named_parameters()}
    merged = dict(sglang.merged_weights(lora_model))
    plain = models.load_model(SMOLLM2, config_overrides=TWO_LAYERS)
    assert sorted(merged) == sorted(plain.state_dict())
    layer = lora_model.base_model.model.model.layers[0].self_attn.q_proj
    scale = layer.scaling["default"]
    expected = (
        layer.base_layer.weight + scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    )
    torch.testing.assert_close(merged["model.layers.0.self_attn.q_proj.weight"], expected)
    for name, param in lora_model.named_parameters():  # unmerged again
        torch.testing.assert_close(param, before[name])


def test_gpu_rollout_script_dry_run():
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", "bench/gpu_rollout.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "--trainer.default_root_dir runs/gpu-rollout/hf" in out.stdout
    assert "lit_swift.rollout.sglang.SGLangEngine" in out.stdout and "--backend sglang" in out.stdout
    if sglang.available() is not None:
        assert f"skip: SGLang colocate and server runs: {sglang.available()}" in out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("sglang") is None, reason="needs sglang")
def test_colocate_engine_generates_seeded_completions_with_logprobs():
    engine = sglang.SGLangEngine(SMOLLM2, sync="adapter", max_lora_rank=8, mem_fraction_static=0.3)
    try:
        requests = [Request([1, 504, 3575, 282], seed=s) for s in range(4)]
        greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
        base = engine.generate(requests, greedy)
        assert all(len(c.token_ids) == len(c.logprobs) > 0 for c in base)
        again = engine.generate(requests, SamplingParams(max_new_tokens=6, temperature=1.0))
        assert again == engine.generate(requests, SamplingParams(max_new_tokens=6, temperature=1.0))  # seeded
    finally:
        engine.close()
