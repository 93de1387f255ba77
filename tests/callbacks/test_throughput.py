"""Throughput numbers equal hand-counted tokens of literal batches under a fake clock; MFU follows the formula."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lit_swift.callbacks.throughput import Throughput, batch_counts, flops_per_token, model_dims

# Padded batch: 2 rows of width 4; row 0 has 3 real tokens, row 1 has 2 (segment -1 = pad).
PADDED = {
    "input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
    "segment_ids": torch.tensor([[0, 0, 0, -1], [0, 0, -1, -1]]),
    "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
    "targets": torch.tensor([[-100, 7, -100, -100], [9, -100, -100, -100]]),
}
# Packed batch: 1 row of width 6 holding samples of 2 and 3 tokens, 1 pad; 3 targets.
PACKED = {
    "input_ids": torch.tensor([[1, 2, 3, 4, 5, 0]]),
    "segment_ids": torch.tensor([[0, 0, 1, 1, 1, -1]]),
    "targets": torch.tensor([[2, -100, 4, 5, -100, -100]]),
    "num_samples": torch.tensor(2),
}


class FakeModule:
    def __init__(self):
        self.logged: dict[str, float] = {}
        self.prog_bar: set[str] = set()

    def log(self, name, value, prog_bar=False, **kwargs):
        self.logged[name] = value
        if prog_bar:
            self.prog_bar.add(name)

    def log_dict(self, metrics, **kwargs):
        self.logged.update(metrics)


def test_batch_counts_by_hand():
    assert batch_counts(PADDED) == {"tokens": 5, "targets": 2, "samples": 2, "positions": 8}
    assert batch_counts(PACKED) == {"tokens": 5, "targets": 3, "samples": 2, "positions": 6}
    no_segments = {k: v for k, v in PADDED.items() if k != "segment_ids"}
    assert batch_counts(no_segments)["tokens"] == 5  # from attention_mask


def test_batch_counts_of_embedding_and_reranker_batches():
    """Embedding pairs: 2 queries (3 + 2 real tokens of 4) and 4 documents (2 + 4 + 1 + 3 of 4): 15 tokens
    in 24 positions, 2 samples (the queries), every token a target (no labels). Reranker: 4 pairs (B=2
    queries x G=2) of 3 positions, 10 real tokens; its [B, G] score labels are not per-token targets."""
    embedding = {
        "query_input_ids": torch.ones(2, 4, dtype=torch.long),
        "query_attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
        "doc_input_ids": torch.ones(4, 4, dtype=torch.long),
        "doc_attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]),
        "doc_ids": ["a", "b", "c", "d"],
    }
    assert batch_counts(embedding) == {"tokens": 15, "targets": 15, "samples": 2, "positions": 24}
    reranker = {
        "input_ids": torch.ones(4, 3, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
    }
    assert batch_counts(reranker) == {"tokens": 10, "targets": 10, "samples": 4, "positions": 12}


def test_rates_over_optimizer_steps_with_accumulation():
    """Step 1 = PADDED + PACKED (accumulated), 2 s; step 2 = PADDED, 3 s. Window of 2 steps, 5 s:
    tokens 5+5+5 = 15 -> 3/s; targets 2+3+2 = 7 -> 1.4/s; samples 2+2+2 = 6 -> 1.2/s;
    padding 1 - 15/(8+6+8) = 7/22. Peak 100 FLOP/s with zero model dims: MFU 0."""
    times = iter([10.0, 12.0, 15.0])
    callback = Throughput(peak_flops=100.0, window=2, clock=lambda: next(times))
    callback.dims = (0, 0, 0, 0)
    trainer, module = SimpleNamespace(global_step=0, world_size=1), FakeModule()
    for batch, step_after in ((PADDED, 0), (PACKED, 1), (PADDED, 2)):
        callback.on_train_batch_start(trainer, module, batch, 0)
        trainer.global_step = step_after
        callback.on_train_batch_end(trainer, module, None, batch, 0)
    got = module.logged
    assert got["throughput/tokens_per_sec"] == pytest.approx(3.0)
    assert got["throughput/target_tokens_per_sec"] == pytest.approx(1.4)
    assert got["throughput/samples_per_sec"] == pytest.approx(1.2)
    assert got["throughput/padding_fraction"] == pytest.approx(7 / 22)
    assert got["throughput/mfu"] == 0.0
    assert module.prog_bar == {"throughput/tokens_per_sec"}


def test_mfu_from_flops_per_token():
    """N = 1000 matmul params, 10 trained, 2 layers, d = 4, T = 4 (PADDED width):
    4*1000 + 2*10 + 12*2*4*4 = 4404 FLOPs/token; 5 tokens in 1 s at peak 22020 FLOP/s -> MFU 1.0."""
    assert flops_per_token(1000, 10, 2, 4, 4) == 4404
    assert flops_per_token(1000, 1000, 0, 0, 0) == 6000  # full fine-tuning: 6N
    times = iter([0.0, 1.0])
    callback = Throughput(peak_flops=22020.0, clock=lambda: next(times))
    callback.dims = (1000, 10, 2, 4)
    trainer, module = SimpleNamespace(global_step=0, world_size=1), FakeModule()
    callback.on_train_batch_start(trainer, module, PADDED, 0)
    trainer.global_step = 1
    callback.on_train_batch_end(trainer, module, None, PADDED, 0)
    assert module.logged["throughput/mfu"] == pytest.approx(1.0)


def test_model_dims_lora_counts(smollm2_dir):
    from lit_swift import models, tuners

    model = models.load_model("smollm2-135m-instruct", config_overrides={"num_hidden_layers": 2})
    num, trained, layers, hidden = model_dims(model)
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    assert (layers, hidden) == (2, model.config.hidden_size)
    assert num == total and trained == total  # tied LM head: the embedding counts once, as the head
    lora = tuners.LoRA(r=8).apply(model)
    num_lora, trained_lora, _, _ = model_dims(lora)
    adapters = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert num_lora == total + adapters and trained_lora == adapters and embed > 0
