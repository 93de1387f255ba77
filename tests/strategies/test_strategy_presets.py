"""Strategy presets: DDP defaults, FSDP wrap policy from the real 2-layer SmolLM2, DeepSpeed config schema,
and every `configs/trainer` fragment names importable classes with valid arguments."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch
import yaml
from lit_swift.strategies.ddp import DDP
from lit_swift.strategies.deepspeed import DeepSpeedZeRO, deepspeed_available, zero_config
from lit_swift.strategies.fsdp import FSDP, decoder_layer_classes
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
FRAGMENTS = sorted((ROOT / "configs" / "trainer").glob("*.yaml"))

# Keys documented at https://www.deepspeed.ai/docs/config-json/ (the subset a preset may use).
DEEPSPEED_TOP = {"zero_optimization", "train_micro_batch_size_per_gpu", "zero_allow_untested_optimizer",
                 "wall_clock_breakdown", "gradient_accumulation_steps", "gradient_clipping", "bf16", "fp16"}  # fmt: skip
DEEPSPEED_ZERO = {
    "stage", "overlap_comm", "contiguous_gradients", "reduce_bucket_size", "allgather_partitions",
    "allgather_bucket_size", "reduce_scatter", "offload_optimizer", "offload_param", "sub_group_size",
    "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold", "stage3_max_live_parameters",
    "stage3_max_reuse_distance", "stage3_gather_16bit_weights_on_model_save",
}  # fmt: skip
DEEPSPEED_OFFLOAD = {"device", "pin_memory", "nvme_path", "buffer_count", "fast_init"}


def import_path(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: p.name)
def test_fragment_classes_and_arguments_exist(path):
    trainer = yaml.safe_load(path.read_text())["trainer"]
    specs = [trainer.get("strategy"), trainer.get("logger"), *(trainer.get("callbacks") or [])]
    for spec in (s for s in specs if isinstance(s, dict)):
        params = inspect.signature(import_path(spec["class_path"])).parameters
        unknown = set(spec.get("init_args") or {}) - set(params)
        assert not unknown, f"{path.name}: {spec['class_path']} has no argument(s) {unknown}"


def test_expected_fragments_ship():
    names = {p.stem for p in FRAGMENTS}
    assert {"cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3"} <= names
    assert {"deepspeed_zero3_offload", "tensorboard", "wandb"} <= names


def test_ddp_cpu_fragment_composes_with_the_debug_config(tmp_path, monkeypatch):
    from lit_swift.cli import run_trainer

    monkeypatch.chdir(ROOT)
    args = ["--config", "configs/debug/sft.yaml", "--config", "configs/trainer/ddp_cpu.yaml"]
    cli = run_trainer([*args, "--trainer.default_root_dir", str(tmp_path)], run=False)
    strategy = cli.trainer.strategy
    assert isinstance(strategy, DDP) and strategy.process_group_backend == "gloo"
    assert cli.trainer.num_devices == 2 and cli.trainer.world_size == 2
    assert strategy._ddp_kwargs["find_unused_parameters"] is False
    assert strategy._ddp_kwargs["static_graph"] is False


def test_fsdp_wraps_each_decoder_layer_of_smollm2(smollm2_dir):
    from lit_swift import models, tuners

    model = tuners.LoRA(r=8).apply(
        models.load_model("smollm2-135m-instruct", config_overrides={"num_hidden_layers": 2})
    )
    layer = type(tuners.base_model(model).model.layers[0])
    assert decoder_layer_classes(model) == {layer}
    strategy = FSDP(sharding_strategy="HYBRID_SHARD", activation_checkpointing=True)
    strategy.configure_wrapping(model)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy is strategy.wrap_policy and policy.classes == {layer}
    wrapped = [m for m in model.modules() if policy(m, recurse=False, nonwrapped_numel=0)]
    assert len(wrapped) == 2 and all(policy(m, True, 0) for m in model.modules())
    check = strategy._activation_checkpointing_kwargs["check_fn"]
    assert [m for m in model.modules() if check(m)] == wrapped
    assert strategy.kwargs["use_orig_params"] is True  # frozen base + trained LoRA share units
    assert strategy._state_dict_type == "full"


def test_fsdp_layer_class_override_and_fallback():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(2, 2)

    toy = nn.Module()
    toy.layers = nn.ModuleList([Block(), Block()])
    assert decoder_layer_classes(toy) == {Block}
    strategy = FSDP(layer_class="torch.nn.Linear")
    strategy.configure_wrapping(toy)
    assert strategy.wrap_policy.classes == {nn.Linear}
    with pytest.raises(ValueError, match="layer_class"):
        decoder_layer_classes(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize(
    "stage,offload_optimizer,offload_params",
    [(2, False, False), (2, True, False), (3, False, False), (3, True, True)],
)
def test_zero_config_uses_documented_keys(stage, offload_optimizer, offload_params):
    config = zero_config(stage, offload_optimizer, offload_params)
    zero = config["zero_optimization"]
    assert set(config) <= DEEPSPEED_TOP and set(zero) <= DEEPSPEED_ZERO
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload_optimizer and ("offload_param" in zero) == offload_params
    for key in ("offload_optimizer", "offload_param"):
        if key in zero:
            assert set(zero[key]) <= DEEPSPEED_OFFLOAD and zero[key]["device"] == "cpu"
    assert any(k.startswith("stage3_") for k in zero) == (stage == 3)
    assert "bf16" not in config and "gradient_accumulation_steps" not in config  # filled by Lightning


def test_zero_config_rejects_bad_combinations():
    with pytest.raises(ValueError, match="stage 3"):
        zero_config(stage=2, offload_params=True)
    with pytest.raises(ValueError, match="2 or 3"):
        zero_config(stage=1)


@pytest.mark.skipif(deepspeed_available(), reason="deepspeed is installed")
def test_deepspeed_strategy_without_deepspeed_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'lit-swift\[deepspeed\]'"):
        DeepSpeedZeRO(stage=3)


class AccumulatingEngine:
    """DeepSpeed's `engine.backward` as far as the loss scale goes (runtime/engine.py)."""

    def __init__(self, gradient_accumulation_steps: int):
        self.steps = gradient_accumulation_steps

    def gradient_accumulation_steps(self) -> int:
        return self.steps

    def backward(self, loss, retain_graph=False, scale_wrt_gas=True):
        if self.gradient_accumulation_steps() > 1 and scale_wrt_gas:
            loss = loss / self.gradient_accumulation_steps()
        loss.backward(retain_graph=retain_graph)


@pytest.mark.parametrize("preset,expected_grad", [(True, 0.5), (False, 0.125)])
def test_deepspeed_backward_divides_by_the_accumulation_once(preset, expected_grad):
    """accumulate_grad_batches = 4 and a micro-batch loss 2 w at w = 1. Lightning's loop hands the strategy
    2 w / 4, so d/dw = 0.5: what DDP and FSDP apply. DeepSpeed's engine divides by its
    gradient_accumulation_steps (= 4, from the same trainer setting) again unless told not to: 0.125.
    `DeepSpeedZeRO.backward` tells it not to; Lightning's own `DeepSpeedStrategy` does not.

    The strategy is built without `__init__`, which only checks that deepspeed is installed; the engine
    is replaced by the arithmetic of its `backward`."""
    import lightning as L
    from lightning.pytorch.plugins.precision.deepspeed import DeepSpeedPrecision
    from lightning.pytorch.strategies import DeepSpeedStrategy

    module = L.LightningModule()
    module.w = nn.Parameter(torch.tensor(1.0))
    module._trainer = type("Trainer", (), {"model": AccumulatingEngine(4)})()
    strategy = object.__new__(DeepSpeedZeRO if preset else DeepSpeedStrategy)
    strategy._model, strategy._lightning_module = None, module

    class EngineBackwardOnly(DeepSpeedPrecision):  # Lightning's DeepSpeed backward, without hook calls
        def pre_backward(self, tensor, module):
            return tensor

        post_backward = pre_backward

    strategy._precision_plugin = EngineBackwardOnly("32-true")
    strategy.backward(2 * module.w / 4, optimizer=None)
    assert module.w.grad.item() == expected_grad


def test_hardware_fragments_leave_the_run_configs_callbacks_alone(tmp_path, monkeypatch):
    """A later `--config` replaces the whole callbacks list, so hardware fragments set none: composing
    `gpu.yaml` after `sft/lora.yaml` keeps the run's checkpoint settings, LR monitor and early stopping."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lit_swift.callbacks.hf_checkpoint import HFCheckpoint
    from lit_swift.callbacks.throughput import Throughput

    from lit_swift.cli import run_trainer

    hardware = [p for p in FRAGMENTS if p.stem not in ("tensorboard", "wandb")]
    for path in hardware:
        assert "callbacks" not in yaml.safe_load(path.read_text())["trainer"], path.name

    monkeypatch.chdir(ROOT)
    args = ["--config", "configs/sft/lora.yaml", "--config", "configs/trainer/gpu.yaml"]
    cpu = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true"]  # no GPU in the tests
    cli = run_trainer([*args, *cpu, "--trainer.default_root_dir", str(tmp_path)], run=False)
    callbacks = {type(c): c for c in cli.trainer.callbacks}
    assert callbacks[HFCheckpoint]._every_n_train_steps == 50 and callbacks[HFCheckpoint].save_top_k == 2
    assert {Throughput, EarlyStopping} <= set(callbacks)
    assert any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks)
