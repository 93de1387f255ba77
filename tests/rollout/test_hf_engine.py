"""HF rollout engine: log-prob parity with the trainer's recompute, seeded and batch-independent draws,
greedy decoding equal to transformers' `generate`, stop at the template's end of turn."""

from __future__ import annotations

import pytest
import torch

from lit_swift import models, tuners
from lit_swift.data.template import ChatEncoder
from lit_swift.rollout.engine import Request, SamplingParams
from lit_swift.rollout.hf import HFEngine, completion_logps, rollout_batch

SMOLLM2 = "smollm2-135m-instruct"
QUESTIONS = ["What is 2 + 3?", "Name a colour.", "Say hi in French, please."]


@pytest.fixture(scope="module")
def policy():
    """2-layer SmolLM2 with a LoRA whose B is non-zero (so the adapters change the outputs)."""
    torch.manual_seed(0)
    model = tuners.LoRA(r=4, alpha=8, dropout=0.0).apply(
        models.load_model(SMOLLM2, config_overrides={"num_hidden_layers": 2})
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model.train()


@pytest.fixture(scope="module")
def prompts(smollm2_tokenizer):
    enc = ChatEncoder(smollm2_tokenizer)
    return [enc.prompt_ids([{"role": "user", "content": q}]) for q in QUESTIONS], enc.stop_token_ids


def _engine(policy) -> HFEngine:
    engine = HFEngine(max_batch_size=8)
    engine.sync_weights(policy)
    return engine


def test_logprob_parity_with_trainer_recompute(policy, prompts):
    ids, stops = prompts
    sampling = SamplingParams(
        max_new_tokens=12, temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1
    )
    requests = [Request(p, seed=100 + i) for i, p in enumerate(ids * 2)]
    completions = _engine(policy).generate(requests, sampling)
    assert policy.training  # the engine restores the mode it found
    batch = rollout_batch([r.prompt_ids for r in requests], [c.token_ids for c in completions], pad_id=0)
    with torch.no_grad():
        trainer = completion_logps(policy, batch, temperature=0.8)  # [N, T]
    for i, c in enumerate(completions):
        assert len(c.token_ids) == len(c.logprobs) > 0
        torch.testing.assert_close(
            trainer[i, : len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4, rtol=0
        )


def test_draws_depend_only_on_the_seed_not_the_batch(policy, prompts):
    ids, _ = prompts
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0)
    together = _engine(policy).generate([Request(p, seed=7) for p in ids], sampling)
    alone = [_engine(policy).generate([Request(p, seed=7)], sampling)[0] for p in ids]
    chunked = HFEngine(max_batch_size=1)
    chunked.sync_weights(policy)
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert [c.token_ids for c in chunked.generate([Request(p, seed=7) for p in ids], sampling)] == [
        c.token_ids for c in alone
    ]
    other = _engine(policy).generate([Request(ids[0], seed=8)], sampling)[0]
    assert other.token_ids != alone[0].token_ids


def test_greedy_matches_transformers_generate_and_stops_at_end_of_turn(policy, prompts):
    ids, stops = prompts
    sampling = SamplingParams(max_new_tokens=40, temperature=0.0, stop_token_ids=tuple(stops))
    out = _engine(policy).generate([Request(p, seed=0) for p in ids], sampling)
    policy.eval()
    try:
        for p, c in zip(ids, out, strict=True):
            with torch.no_grad():
                ref = policy.generate(
                    input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                    max_new_tokens=40, do_sample=False, eos_token_id=list(stops), pad_token_id=0,
                )[0, len(p):].tolist()  # fmt: skip
            assert c.token_ids == ref
            assert c.finish_reason == ("stop" if ref[-1] in stops else "length")
    finally:
        policy.train()


def test_length_finish_and_token_budget(policy, prompts):
    ids, stops = prompts
    out = _engine(policy).generate(
        [Request(ids[0], seed=1)], SamplingParams(max_new_tokens=3, temperature=1.0)
    )
    assert len(out[0].token_ids) == 3 and out[0].finish_reason == "length"
