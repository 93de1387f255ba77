"""Saving under wrapped and sharded models, in one process: clean names, lean checkpoints, HF folders,
the strategy dispatch, and ZeRO-3 gathering against a stand-in for DeepSpeed's partitioning.

The wrappers are the ones the strategies put around decoder layers: torch's activation-checkpoint
wrapper (`_checkpoint_wrapped_module.`), `torch.compile` (`_orig_mod.`) and a stand-in for an FSDP1 unit
(a module holding the layer as `_fsdp_wrapped_module`; the real one needs a process group and is covered
by `test_fsdp_cpu.py`).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from lit_swift.strategies import gather
from lit_swift.strategies.ddp import DDP
from lit_swift.strategies.fsdp import FSDP
from safetensors.torch import load_file
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from lit_swift import tuners
from lit_swift.objectives.base import clean_name, unwrapped
from lit_swift.objectives.sft import SFT


class FSDPUnit(nn.Module):
    """Names its module as an FSDP1 unit does."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._fsdp_wrapped_module = module

    def forward(self, *args, **kwargs):
        return self._fsdp_wrapped_module(*args, **kwargs)


class FakeTrainer:
    datamodule = SimpleNamespace(batch_size=4)
    accumulate_grad_batches = 2
    world_size = 1


@pytest.fixture
def wrapped(tiny_dir):
    """A LoRA objective whose layer 0 is FSDP(checkpoint(layer)) and layer 1 `torch.compile(layer)`,
    plus its clean state dict and adapter names taken before wrapping."""
    torch.manual_seed(0)
    objective = SFT(tiny_dir, tuner=tuners.LoRA(r=4, alpha=8, dropout=0.0), attn_implementation="sdpa")
    objective.configure_model()
    for name, param in objective.named_parameters():
        if "lora_B" in name:
            param.data.normal_()
    clean = {k: v.clone() for k, v in objective.state_dict().items()}
    adapters = {n for n, p in objective.named_parameters() if p.requires_grad}
    layers = objective.backbone.layers
    layers[0] = FSDPUnit(checkpoint_wrapper(layers[0]))
    layers[1] = torch.compile(layers[1])  # lazy: nothing compiles unless it runs
    objective._trainer = FakeTrainer()
    return objective, clean, adapters


def test_wrapped_names_clean_to_the_unwrapped_ones(wrapped):
    objective, clean, adapters = wrapped
    names = [n for n, _ in objective.named_parameters()]
    assert any("._fsdp_wrapped_module._checkpoint_wrapped_module." in n for n in names)
    assert any(".layers.1._orig_mod." in n for n in names)
    assert {clean_name(n) for n in names} == set(clean)  # no buffers saved, no tied weights here
    assert {clean_name(n) for n, p in objective.named_parameters() if p.requires_grad} == adapters


@pytest.mark.parametrize("keys", ["clean", "wrapped"])
def test_lean_checkpoint_holds_exactly_the_adapters_of_a_wrapped_model(wrapped, keys):
    """Strategies hand `on_save_checkpoint` clean names (FSDP's full and sharded state dicts); a plain
    `state_dict()` of a wrapped model keeps the wrapper names. Either way only the adapters stay."""
    objective, clean, adapters = wrapped
    state = clean if keys == "clean" else objective.state_dict()
    checkpoint = {"state_dict": dict(state)}
    objective.on_save_checkpoint(checkpoint)
    assert {clean_name(k) for k in checkpoint["state_dict"]} == adapters
    assert len(checkpoint["state_dict"]) == len(adapters) == 2 * 7 * 2  # layers x all-linear x (A, B)
    assert checkpoint["layout"] == {"batch_size": 4, "accumulate_grad_batches": 2, "world_size": 1}


def test_unwrapped_puts_the_wrappers_back(wrapped):
    objective, clean, _ = wrapped
    before = [type(m) for m in objective.modules()]
    with unwrapped(objective.model) as model:
        assert {"model." + n for n in model.state_dict()} == set(clean)
    assert [type(m) for m in objective.modules()] == before


def test_hf_adapter_folder_from_a_gathered_state_of_a_wrapped_model(wrapped, tmp_path):
    """PEFT selects adapter entries by the model's module names; wrapped names would select none."""
    objective, clean, adapters = wrapped
    gathered = {k: v for k, v in clean.items() if k in adapters}  # what a sharded strategy gathers
    objective.save_hf(tmp_path / "x.hf", state_dict=gathered)
    saved = load_file(tmp_path / "x.hf" / "adapter_model.safetensors")
    assert len(saved) == len(adapters)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    torch.testing.assert_close(saved[key], clean["model." + key.replace("lora_B.", "lora_B.default.")])


def test_unsharded_strategies_need_no_gathering():
    assert gather.gather_state_dict(DDP(), trainable_only=True) is None
    assert not gather.shards_weights(DDP())
    assert gather.shards_weights(FSDP())


class PartitionedParameters:
    """Stand-in for `deepspeed.zero.GatheredParameters`: a partitioned parameter holds an empty tensor
    outside the block and its whole value (kept in `whole`) inside; unpartitioned tensors pass through."""

    gathers: list[str] = []

    def __init__(self, params, modifier_rank=None):
        self.params = [p for p in params if hasattr(p, "ds_id")]

    def __enter__(self):
        for p in self.params:
            PartitionedParameters.gathers.append(p.ds_id)
            p.data = p.whole

    def __exit__(self, *exc):
        for p in self.params:
            p.data = torch.empty(0)


def partition(module: nn.Module) -> None:
    for i, p in enumerate(module.parameters()):
        p.ds_id, p.whole, p.data = f"p{i}", p.data.clone(), torch.empty(0)


@pytest.mark.parametrize("rank", [0, 1])
def test_zero3_state_dict_gathers_one_parameter_at_a_time(monkeypatch, rank):
    """A tied embedding/head (one parameter, two names), a frozen linear, a buffer. Rank 0 gets every
    name with whole values; other ranks join each gather and get nothing; the shared parameter is
    gathered once; everything is partitioned again afterwards."""
    from lit_swift.strategies.deepspeed import zero3_state_dict

    torch.manual_seed(0)
    module = nn.Module()
    module.embed, module.head, module.frozen = (
        nn.Embedding(5, 3),
        nn.Linear(3, 5, bias=False),
        nn.Linear(3, 3),
    )
    module.head.weight = module.embed.weight
    module.frozen.requires_grad_(False)
    module.register_buffer("scale", torch.tensor([2.0]))
    whole = {k: v.clone() for k, v in module.state_dict().items()}
    partition(module)
    fake = SimpleNamespace(zero=SimpleNamespace(GatheredParameters=PartitionedParameters))
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)

    PartitionedParameters.gathers = []
    state = zero3_state_dict(module, trainable_only=False)
    assert PartitionedParameters.gathers == ["p0", "p1", "p2"]  # embed(=head), frozen.weight, frozen.bias
    if rank == 0:
        assert state.keys() == whole.keys()
        for key, value in whole.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    else:
        assert state == {}
    assert all(p.numel() == 0 for p in module.parameters())  # partitioned again

    PartitionedParameters.gathers = []
    trainable = zero3_state_dict(module, trainable_only=True)
    assert PartitionedParameters.gathers == ["p0"]
    assert set(trainable) == ({"embed.weight", "head.weight"} if rank == 0 else set())
