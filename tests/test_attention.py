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
