"""LoRA sibling groups (`lit_swift.lora_groups`): the same outputs, gradients and dropout draws as the
members run one by one, frozen weights untouched, and the members' own forward for anything unusual."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_swift import lora_groups, tuners

VOCAB = 64


def tiny_llama(bias: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attention_bias=bias,
    )
    return LlamaForCausalLM(config)


def lora_model(fuse: bool, dropout: float = 0.3, bias: bool = False, **kwargs) -> torch.nn.Module:
    model = tuners.LoRA(r=4, dropout=dropout, fuse_siblings=fuse, **kwargs).apply(tiny_llama(bias)).train()
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: give the adapters something to add
            torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(len(name)))
    return model


def step(
    model: torch.nn.Module, seed: int = 3, dtype=torch.float32
) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Loss, trainable gradients and the adapters-off logits of one forward/backward on fixed tokens."""
    torch.manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 12))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    with tuners.adapters_disabled(model), torch.no_grad():
        base = model(input_ids=ids).logits
    model.zero_grad()
    return loss.detach(), grads, base


def assert_same(a, b) -> None:
    (loss_a, grads_a, base_a), (loss_b, grads_b, base_b) = a, b
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_b.items():
        torch.testing.assert_close(grads_a[name], grad, msg=name)
    torch.testing.assert_close(base_a, base_b)


def groups_of(model: torch.nn.Module) -> list[lora_groups.SiblingGroup]:
    found = {id(g): g for m in model.modules() if (g := getattr(m, "_lit_sibling_group", (None,))[0])}
    return list(found.values())


def test_groups_are_qkv_and_gate_up_per_layer():
    groups = groups_of(lora_model(fuse=True))
    assert len(groups) == 4  # 2 layers x (q/k/v, gate/up)
    assert sorted(len(g.members) for g in groups) == [2, 2, 3, 3]
    assert groups_of(lora_model(fuse=False)) == []
    # siblings that draw their own dropout masks see different inputs: not grouped
    assert groups_of(lora_model(fuse=True, shared_dropout=False)) == []
    assert len(groups_of(lora_model(fuse=True, dropout=0.0, shared_dropout=False))) == 4


def test_grouped_equals_members_one_by_one():
    """Same loss, gradients (every LoRA A and B), dropout draws and adapters-off output; with biases too."""
    for bias in (False, True):
        assert_same(step(lora_model(True, bias=bias)), step(lora_model(False, bias=bias)))


def test_frozen_weights_are_untouched_and_one_a_matmul_serves_the_group():
    model = lora_model(fuse=True)
    weights = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    ptrs = {n: p.data_ptr() for n, p in weights.items()}
    calls = []
    model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].register_forward_hook(
        lambda *a: calls.append("q")
    )
    step(model)
    assert {n: p.data_ptr() for n, p in weights.items()} == ptrs  # no copies, no re-homing
    assert calls == []  # the group used the stacked A weights directly


def test_unusual_calls_run_the_members_one_by_one():
    """Autocast, extra arguments and merged adapters take the members' own forward, with the same result."""
    grouped, plain = lora_model(True, dropout=0.0), lora_model(False, dropout=0.0)
    x = torch.randn(2, 5, 16)
    attn = [m.base_model.model.model.layers[0].self_attn for m in (grouped, plain)]
    with torch.no_grad():
        torch.testing.assert_close(attn[0].k_proj(x), attn[1].k_proj(x))  # q and v now wait for x
        with tuners.adapters_disabled(grouped), tuners.adapters_disabled(plain):
            torch.testing.assert_close(attn[0].q_proj(x), attn[1].q_proj(x))  # not the waiting adapted q
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(attn[0].v_proj(x), attn[1].v_proj(x))
        merged = [tuners.merge(m) for m in (grouped, plain)]
    ids = torch.randint(0, VOCAB, (2, 12))
    torch.testing.assert_close(merged[0](input_ids=ids).logits, merged[1](input_ids=ids).logits)


def test_gradient_checkpointing_gives_the_same_gradients():
    runs = []
    for checkpointing in (False, True):
        model = lora_model(True)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        runs.append(step(model))
    assert_same(*runs)


def test_pending_outputs_are_dropped_once_served():
    model = lora_model(True)
    step(model)
    assert all(g._pending == {} and g._input is None for g in groups_of(model))
