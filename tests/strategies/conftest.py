"""A tiny random Llama folder for the strategy tests (fast to shard, gather and save)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    """A 2-layer random Llama (hidden size 16) with SmolLM2's tokenizer, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return str(folder)
