"""Packing: FFD on literal inputs, efficiency, streaming, and packed == unpacked per-sample losses."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from lit_swift.data.collate import collate_packed, collate_padded, collate_preference_packed, model_inputs
from lit_swift.data.packing import pack_first_fit_decreasing, pack_stream, packing_efficiency
from lit_swift.types import IGNORE_INDEX, EncodedSample


def _naive_ffd(lengths: list[int], max_length: int) -> list[list[int]]:
    bins, free = [], []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        b = next((b for b, f in enumerate(free) if f >= lengths[i]), len(bins))
        if b == len(bins):
            bins.append([])
            free.append(max_length)
        bins[b].append(i)
        free[b] -= lengths[i]
    return bins


def test_ffd_literal():
    # longest first: 7 -> bin0 (1 left), 5 -> bin1 (3), 4 -> bin2 (4), 3 -> bin1 (0), 2 -> bin2 (2), 1 -> bin0
    assert pack_first_fit_decreasing([3, 7, 2, 5, 4, 1], 8) == [[1, 5], [3, 0], [4, 2]]
    assert pack_first_fit_decreasing([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]  # ties broken by index
    assert pack_first_fit_decreasing([4, 4, 4], 4) == [[0], [1], [2]]
    assert pack_first_fit_decreasing([1], 4) == [[0]]
    assert pack_first_fit_decreasing([], 4) == []


def test_ffd_matches_naive_reference():
    rng = random.Random(0)
    for _ in range(50):
        max_length = rng.randint(1, 40)
        lengths = [rng.randint(1, max_length) for _ in range(rng.randint(1, 60))]
        assert pack_first_fit_decreasing(lengths, max_length) == _naive_ffd(lengths, max_length)


def test_ffd_rejects_too_long_and_empty_collecting_all():
    with pytest.raises(ValueError, match=r"sample 1 has 9 tokens; sample 3 has 0 tokens"):
        pack_first_fit_decreasing([3, 9, 2, 0], 8)


def test_efficiency_lognormal():
    rng = random.Random(0)
    lengths = [min(1024, max(1, int(rng.lognormvariate(5.0, 1.0)))) for _ in range(2000)]
    bins = pack_first_fit_decreasing(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(2000))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    assert packing_efficiency(bins, lengths, 1024) >= 0.99
    assert packing_efficiency([[0], [1]], [3, 1], 4) == 0.5


def test_pack_stream_yields_every_sample_once():
    rng = random.Random(1)
    samples = [EncodedSample([i] * (n := rng.randint(1, 32)), [i] * n) for i in range(500)]
    bins = list(pack_stream(iter(samples), max_length=32, buffer_size=64))
    seen = [s.input_ids[0] for b in bins for s in b]
    assert sorted(seen) == list(range(500))
    assert all(sum(len(s) for s in b) <= 32 for b in bins)
    assert all(s is samples[s.input_ids[0]] for b in bins for s in b)
    # buffers are packed independently: no bin mixes samples of two buffers
    assert all(len({s.input_ids[0] // 64 for s in b}) == 1 for b in bins)
    with pytest.raises(ValueError, match="sample 2 of the stream has 40 tokens"):
        list(pack_stream([samples[0], samples[1], EncodedSample([0] * 40, [0] * 40)], 32, 8))


# ---- the key invariant: packed per-sample losses equal the samples run one by one ----

TEXTS = [
    "What is the capital of France? The capital of France is Paris.",
    "Hi!",
    "Write a haiku about autumn leaves falling slowly into a quiet pond at dusk.",
    "2 + 2 = 4",
    "Explain gradient descent in one sentence: step against the gradient to lower the loss.",
]


@pytest.fixture(scope="module")
def model_and_samples():
    from lit_swift import models

    model = models.load_model("smollm2-135m-instruct", config_overrides={"num_hidden_layers": 2}).eval()
    tok = models.load_tokenizer("smollm2-135m-instruct")
    samples = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        half = len(ids) // 2
        samples.append(EncodedSample(ids, [IGNORE_INDEX] * half + ids[half:]))
    return model, samples, tok.pad_token_id


def _per_sample_loss(model, batch: dict, **forward) -> torch.Tensor:
    """Summed next-token cross-entropy of each sample, [num_samples], from `targets`/`segment_ids`."""
    with torch.no_grad():
        logits = model(**{**model_inputs(batch), **forward}).logits  # [B, T, V]
    nll = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), reduction="none")  # [B*T]
    seg = batch["segment_ids"].flatten()  # [B*T]
    keep = seg >= 0
    return torch.zeros(int(batch["num_samples"])).index_add_(0, seg[keep], nll[keep])


@pytest.fixture(scope="module")
def reference(model_and_samples):
    model, samples, pad_id = model_and_samples
    return torch.cat([_per_sample_loss(model, collate_padded([s], pad_id)) for s in samples])  # [N]


def _packed(samples, pad_id):
    max_length = 40
    bins = pack_first_fit_decreasing([len(s) for s in samples], max_length)
    assert len(bins) == 2 and all(len(b) > 1 for b in bins), [[len(samples[i]) for i in b] for b in bins]
    order = [i for b in bins for i in b]  # segment k is sample order[k]
    return collate_packed([[samples[i] for i in b] for b in bins], pad_id), order


def test_packed_loss_equals_unpacked(model_and_samples, reference):
    model, samples, pad_id = model_and_samples
    assert (reference > 0).all()
    batch, order = _packed(samples, pad_id)
    assert "attention_mask" not in model_inputs(batch)
    packed = _per_sample_loss(model, batch)
    torch.testing.assert_close(packed, reference[order], atol=1e-4, rtol=1e-5)
    # the explicit 4D block-diagonal mask gives the same answer
    explicit = _per_sample_loss(model, batch, **model_inputs(batch, explicit_mask=True))
    torch.testing.assert_close(explicit, reference[order], atol=1e-4, rtol=1e-5)


def test_padded_loss_equals_unpacked(model_and_samples, reference):
    model, samples, pad_id = model_and_samples
    batch = collate_padded(samples, pad_id, pad_to_multiple_of=8)
    torch.testing.assert_close(_per_sample_loss(model, batch), reference, atol=1e-4, rtol=1e-5)


def test_preference_packed_segments_follow_pairs(model_and_samples, reference):
    model, samples, pad_id = model_and_samples
    pairs = [(samples[0], samples[1]), (samples[2], samples[3]), (samples[4], samples[0])]
    batch = collate_preference_packed(pairs, pad_id, max_length=48)
    expected = reference[[0, 2, 4, 1, 3, 0]]  # [chosen_0..2, rejected_0..2]
    torch.testing.assert_close(_per_sample_loss(model, batch), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("contamination", ["positions_not_reset", "use_cache_default", "segments_merged"])
def test_contaminated_packing_is_detected(model_and_samples, reference, contamination):
    """Each broken variant lets a sample attend to its row-predecessor: the comparison above must fail."""
    model, samples, pad_id = model_and_samples
    batch, order = _packed(samples, pad_id)
    forward = {}
    if contamination == "positions_not_reset":
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    elif contamination == "use_cache_default":
        forward["use_cache"] = None  # the model's config default (True) -> empty cache -> plain causal mask
    else:
        segments = batch["segment_ids"].clamp(min=0)  # [B, T]; row 0's samples become one segment
        segments[0] = 0
        forward = model_inputs({**batch, "segment_ids": segments}, explicit_mask=True)
    packed = _per_sample_loss(model, batch, **forward)  # [N]
    rows = batch["segment_ids"][:1] if contamination == "segments_merged" else batch["segment_ids"]
    # samples with a row-predecessor are the ones a leak can reach
    hit = sorted(int(k) for row in rows for k in row[row >= 0].unique_consecutive()[1:])
    clean = [k for k in range(len(order)) if k not in hit]
    torch.testing.assert_close(packed[clean], reference[order][clean], atol=1e-4, rtol=1e-5)
    assert (packed[hit] - reference[order][hit]).abs().min() > 1e-2
