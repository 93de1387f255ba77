"""`sdpa_varlen`: per-sample attention for packed rows equals each sample run alone."""

from __future__ import annotations

import pytest
import torch

from lit_swift import attention, models
from lit_swift.data.collate import collate_packed, collate_padded, model_inputs
from lit_swift.types import EncodedSample


def test_segments_literal():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    assert attention.segments(pos) == [[(0, 3), (3, 5), (5, 9)], [(0, 6), (6, 9)]]
    # a padded row counts on through its pads: one span
    assert attention.segments(torch.arange(5)[None]) == [[(0, 5)]]


@pytest.fixture(scope="module")
def model():
    m = models.load_model(
        "smollm2-135m-instruct", attn_implementation="sdpa_varlen", config_overrides={"num_hidden_layers": 2}
    )
    return m.eval()


@pytest.fixture(scope="module")
def samples():
    g = torch.Generator().manual_seed(0)
    return [
        EncodedSample(torch.randint(10, 40000, (n,), generator=g).tolist(), [0] * n)
        for n in (23, 9, 31, 5, 17)
    ]


def _hidden(model, batch: dict, impl: str) -> torch.Tensor:
    """Hidden states at the non-pad positions, flattened row-major. # [N, H]"""
    model.set_attn_implementation(impl)
    try:
        hidden = model.model(**model_inputs(batch)).last_hidden_state  # [B, T, H]
    finally:
        model.set_attn_implementation(attention.NAME)
    return hidden[batch["segment_ids"] >= 0]


def test_packed_rows_equal_each_sample_alone(model, samples):
    batch = collate_packed([samples[:3], samples[3:]], pad_id=0)  # row 1 ends in pads
    assert batch["input_ids"].shape == (2, 63)
    with torch.no_grad():
        packed = _hidden(model, batch, attention.NAME)
        alone = torch.cat([_hidden(model, collate_padded([s], 0), "sdpa") for s in samples])
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)


def test_gradients_equal_masked_sdpa(model, samples):
    batch = collate_packed([samples], pad_id=0)
    grads = {}
    for impl in (attention.NAME, "sdpa"):
        model.zero_grad()
        _hidden(model, batch, impl).pow(2).mean().backward()
        grads[impl] = [p.grad.clone() for p in model.model.layers[0].self_attn.parameters()]
    for a, b in zip(grads[attention.NAME], grads["sdpa"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_padded_batch_takes_the_masked_path(model, samples):
    """One span per row: the plain sdpa path with transformers' padding mask, bit for bit."""
    batch = collate_padded(samples, pad_id=0)
    with torch.no_grad():
        torch.testing.assert_close(_hidden(model, batch, attention.NAME), _hidden(model, batch, "sdpa"))


def test_positions_not_reset_is_not_hidden(model, samples):
    """Segments come from position_ids: a collator that forgets to restart them is not silently fixed."""
    batch = collate_packed([samples[:2]], pad_id=0)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    with torch.no_grad():
        second = _hidden(model, batch, attention.NAME)[len(samples[0]) :]
        alone = _hidden(model, collate_padded([samples[1]], 0), "sdpa")
    assert (second - alone).abs().max() > 1e-2


def test_positions_changed_in_place_are_seen(model, samples):
    batch = collate_packed([samples[:2]], pad_id=0)
    with torch.no_grad():
        packed = _hidden(model, batch, attention.NAME)
        batch["position_ids"].copy_(
            torch.arange(batch["input_ids"].shape[1])[None]
        )  # same tensor, new values
        merged = _hidden(model, batch, attention.NAME)
    assert (merged[len(samples[0]) :] - packed[len(samples[0]) :]).abs().max() > 1e-2


# ----- packed kernels for GPUs: one call per batch instead of one per sample -----
def _qkv(seed: int, batch: int = 2, heads: int = 4, kv_heads: int = 2, t: int = 40, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, t, d, generator=g) for n in (heads, kv_heads, kv_heads)]


class _Attn(torch.nn.Module):
    """Stand-in for a decoder layer's attention module (what transformers' sdpa reads from it)."""

    is_causal = True
    num_key_value_groups = 2


PACKED_POS = torch.tensor([[*range(13), *range(20), *range(7)], [*range(25), *range(15)]])  # [2, 40]


def test_sample_ids_and_cu_seqlens_literal():
    pos = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]])
    assert attention.sample_ids(pos).tolist() == [[1, 1, 1, 2, 2], [1, 1, 2, 2, 2]]
    bounds, longest = attention.cu_seqlens(pos, 2)
    assert bounds.tolist() == [0, 3, 5, 7, 10] and bounds.dtype == torch.int32 and longest == 3


@pytest.mark.filterwarnings("ignore::UserWarning")  # eager FlexAttention warns that it is a reference path
def test_flex_attention_equals_the_per_sample_loop():
    """FlexAttention (eager on CPU, forward only: torch has no CPU backward for it) over the block mask
    built from position_ids gives the per-sample causal attention, GQA included."""
    q, k, v = _qkv(0)
    module, spans = _Attn(), attention.segments(PACKED_POS)
    with torch.no_grad():
        loop = attention._loop(module, q, k, v, PACKED_POS, spans, 0.0, 0.25)
        flex = attention._flex(module, q, k, v, PACKED_POS, spans, 0.0, 0.25)
    assert flex.shape == loop.shape == (2, 40, 4, 16)
    torch.testing.assert_close(flex, loop, atol=1e-5, rtol=1e-5)


def test_kernel_choice(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.delenv(attention.KERNEL_ENV, raising=False)
    assert attention.packed_kernel(torch.device("cpu")) == "loop"
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    assert attention.packed_kernel(cuda) == "flex"  # a GPU without flash-attn still packs in one call
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: object())
    assert attention.packed_kernel(cuda) == "flash"
    monkeypatch.setenv(attention.KERNEL_ENV, "loop")
    assert attention.packed_kernel(cuda) == "loop"
    monkeypatch.setenv(attention.KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="expected one of loop, flex, flash"):
        attention.packed_kernel(cuda)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_model_forward_with_flex_kernel_equals_each_sample_alone(model, samples, monkeypatch):
    monkeypatch.setenv(attention.KERNEL_ENV, "flex")
    batch = collate_packed([samples[:3], samples[3:]], pad_id=0)
    with torch.no_grad():
        packed = _hidden(model, batch, attention.NAME)
        alone = torch.cat([_hidden(model, collate_padded([s], 0), "sdpa") for s in samples])
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["flex", "flash"])
def test_gpu_packed_kernel_forward_and_backward_equal_the_loop(kernel):
    if kernel == "flash":
        pytest.importorskip("flash_attn")
    q, k, v = (x.cuda().to(torch.bfloat16).requires_grad_() for x in _qkv(1, t=40))
    pos, module = PACKED_POS.cuda(), _Attn()
    spans = attention.segments(pos)
    outs, grads = [], []
    for fn in (attention._loop, attention.KERNELS[kernel]):
        out = fn(module, q, k, v, pos, spans, 0.0, 0.25)
        (g,) = torch.autograd.grad((out.float() ** 2).sum(), [q])
        outs.append(out.float())
        grads.append(g.float())
    torch.testing.assert_close(outs[1], outs[0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(grads[1], grads[0], atol=5e-2, rtol=5e-2)
