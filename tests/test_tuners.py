"""Tuners: which weights train (LoRA, Full, Freeze), DoRA/rsLoRA/LoRA+ switches, QLoRA on CPU, NEFTune,
and the parameter counts logged when the objective builds its model."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_swift import tuners
from lit_swift.objectives.sft import SFT

VOCAB = 64


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def two_steps(model: torch.nn.Module, tuner: tuners.Tuner) -> dict[str, bool]:
    """Run two AdamW steps on random tokens; return, per parameter name, whether it changed."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([g["params"] for g in tuner.param_groups(model)][0], lr=1e-2)
    ids = torch.randint(0, VOCAB, (2, 12))
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {n: not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()}


def test_lora_trains_only_adapters():
    tuner = tuners.LoRA(r=4, alpha=8, dropout=0.0)
    model = tuner.apply(tiny_llama())
    changed = two_steps(model, tuner)
    lora = {n for n in changed if "lora_" in n}
    assert lora and all(changed[n] for n in lora)
    assert not any(changed[n] for n in changed if n not in lora)


def test_full_trains_everything():
    tuner = tuners.Full()
    model = tuner.apply(tiny_llama().requires_grad_(False))
    assert all(two_steps(model, tuner).values())


def test_freeze_trains_only_matching_names():
    tuner = tuners.Freeze([r"layers\.1\.", r"^model\.norm"])
    model = tuner.apply(tiny_llama())
    changed = two_steps(model, tuner)
    for name, did in changed.items():
        assert did == ("layers.1." in name or name == "model.norm.weight"), name
    with pytest.raises(ValueError, match="no parameter name matches"):
        tuners.Freeze(["nothing_like_this"]).apply(tiny_llama())


def test_dora_and_rslora_reach_peft():
    dora = tuners.LoRA(r=4, alpha=8, use_dora=True).apply(tiny_llama())
    assert dora.peft_config["default"].use_dora
    assert any("lora_magnitude_vector" in n for n, _ in dora.named_parameters())
    rs = tuners.LoRA(r=4, alpha=8, use_rslora=True).apply(tiny_llama())
    plain = tuners.LoRA(r=4, alpha=8).apply(tiny_llama())
    q_rs = rs.get_base_model().model.layers[0].self_attn.q_proj
    q_plain = plain.get_base_model().model.layers[0].self_attn.q_proj
    assert q_rs.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    assert q_plain.scaling["default"] == pytest.approx(8 / 4)


def objective(tuner: tuners.Tuner, lr: float = 1e-3) -> SFT:
    """An SFT objective around the tiny model (no loading) with a stand-in trainer for the schedule."""
    module = SFT("unused", tuner=tuner, optimizer=lambda p: torch.optim.AdamW(p, lr=lr))
    module.model = tuner.apply(tiny_llama())
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)
    return module


def test_lora_plus_gives_b_matrices_ratio_times_lr():
    module = objective(tuners.LoRA(r=4, lora_plus_ratio=16.0), lr=1e-3)
    optimizer = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.model.named_parameters()}
    by_lr = {g["lr"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
    assert sorted(by_lr) == [pytest.approx(1e-3), pytest.approx(16e-3)]
    assert all("lora_B" in n for n in by_lr[max(by_lr)]) and by_lr[max(by_lr)]
    assert all("lora_B" not in n for n in by_lr[min(by_lr)])


def test_qlora_on_cpu_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="QLoRA needs the bitsandbytes package and a CUDA GPU"):
        tuners.QLoRA().load_kwargs()


def test_neftune_adds_noise_only_in_training():
    model = tiny_llama()
    embed = model.get_input_embeddings()
    ids = torch.randint(0, VOCAB, (2, 8))
    clean = embed(ids)
    tuners.add_neftune(model, alpha=5.0)
    model.eval()
    torch.testing.assert_close(embed(ids), clean)
    model.train()
    noise = embed(ids) - clean
    bound = 5.0 / math.sqrt(8 * 16)  # alpha / sqrt(L * d)
    assert noise.abs().max() > 0 and noise.abs().max() <= bound + 1e-6


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    """A tiny random Llama with SmolLM2's tokenizer, saved as a model folder (fast to load)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    config = tiny_llama().config
    config.vocab_size = len(smollm2_tokenizer)
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return str(folder)


def test_parameter_counts_logged_when_the_model_is_built(tiny_dir, caplog):
    module = SFT(tiny_dir, tuner=tuners.LoRA(r=4))
    with caplog.at_level(logging.INFO):
        module.configure_model()
    trainable, total = tuners.count_parameters(module.model)
    assert 0 < trainable < total
    assert f"trainable parameters: {trainable:,} of {total:,}" in caplog.text


def test_input_dropout_statistics_and_gradient():
    drop = tuners.InputDropout(0.25, shared=False).train()
    x = torch.ones(200, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d(x * mask)/dx = mask
    assert drop.eval()(x) is x


def test_keep_mask_quantises_p_to_16_bits_and_scales_by_what_it_kept():
    x = torch.empty(1000, 999)  # an odd size: the 64-bit draws are cut to the element count
    keep, scale = tuners.keep_mask(x, 0.05)
    assert keep.shape == x.shape and keep.dtype == torch.bool
    cut = round(0.05 * 65536)
    assert scale == 65536 / (65536 - cut)  # p' = 3277 / 65536, so E[x * keep * scale] = x exactly
    assert abs((~keep).float().mean().item() - cut / 65536) < 0.002
    assert not torch.equal(keep, tuners.keep_mask(x, 0.05)[0])  # fresh draws each call
    assert tuners.keep_mask(x, 0.0)[0].all() and tuners.keep_mask(x, 0.0)[1] == 1.0
    dropped, scale = tuners.keep_mask(x, 1.0)
    assert not dropped.any() and scale == 0.0


def _adapter_inputs(tuner: tuners.LoRA) -> dict[str, torch.Tensor]:
    """The dropped input each LoRA A matrix of layer 0 sees in one training forward (hooks on `lora_A`
    fire only for members run one by one, so pass `fuse_siblings=False`)."""
    model = tuner.apply(tiny_llama()).train()
    seen = {}

    def keep(name: str):
        def hook(module, args, output) -> None:
            seen.setdefault(name, args[0])

        return hook

    layer = model.base_model.model.model.layers[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        proj = getattr(layer.self_attn, name, None) or getattr(layer.mlp, name)
        proj.lora_A["default"].register_forward_hook(keep(name))
    model(input_ids=torch.randint(0, VOCAB, (2, 12)))
    return seen


def test_shared_dropout_draws_one_mask_per_input():
    seen = _adapter_inputs(tuners.LoRA(r=4, dropout=0.5, fuse_siblings=False))
    assert seen["q_proj"] is seen["k_proj"] is seen["v_proj"]
    assert seen["gate_proj"] is seen["up_proj"]
    zeros = {name: (x == 0) for name, x in seen.items()}
    assert 0.3 < zeros["q_proj"].float().mean() < 0.7
    assert not torch.equal(zeros["q_proj"], zeros["gate_proj"])  # same shape, another input: new mask


def test_unshared_dropout_draws_one_mask_per_adapter():
    seen = _adapter_inputs(tuners.LoRA(r=4, dropout=0.5, shared_dropout=False, fuse_siblings=False))
    assert not torch.equal(seen["q_proj"] == 0, seen["k_proj"] == 0)


def test_shared_dropout_survives_gradient_checkpointing():
    """Checkpointing recomputes the forward with the RNG state restored: the same masks, the same grads."""
    grads = []
    for checkpointing in (False, True):
        model = tuners.LoRA(r=4, dropout=0.3).apply(tiny_llama()).train()
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(1)
        ids = torch.randint(0, VOCAB, (2, 12))
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad)


def test_fused_lora_forward_equals_peft():
    """Same outputs, gradients and dropout draws as peft's own forward; disabled adapters give the base."""
    runs = []
    for fused in (True, False):
        model = tuners.LoRA(r=4, dropout=0.2).apply(tiny_llama()).train()
        if not fused:
            for module in model.modules():
                module.__dict__.pop("forward", None)  # back to peft's class method
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(
                    param, std=0.1, generator=torch.Generator().manual_seed(hash(name) % 1000)
                )
        torch.manual_seed(3)
        ids = torch.randint(0, VOCAB, (2, 12))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        with tuners.adapters_disabled(model), torch.no_grad():
            base = model(input_ids=ids).logits
        runs.append((loss, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, base))
    (loss_f, grads_f, base_f), (loss_p, grads_p, base_p) = runs
    assert loss_f.grad_fn is not None
    torch.testing.assert_close(loss_f, loss_p)
    for name, grad in grads_p.items():
        torch.testing.assert_close(grads_f[name], grad, msg=name)
    torch.testing.assert_close(base_f, base_p)
    assert tuners.use_fused_lora_forward(tiny_llama()) == 0  # nothing to patch without peft
