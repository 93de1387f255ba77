"""Inference: JSONL batches, determinism, left padding, streamed interactive chat and the CLI."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from lit_swift import models, tuners
from lit_swift.cli import main
from lit_swift.data.template import ChatEncoder
from lit_swift.export.infer import (
    Generator,
    Sampling,
    answer_file,
    chat,
    infer,
    load_generator,
    read_conversations,
)

SMOLLM2 = "smollm2-135m-instruct"
TWO_LAYERS = {"num_hidden_layers": 2}
ROWS = [
    {"prompt": "Who are you?"},
    {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]},
    {"query": "Say hello", "system": "Be brief.", "id": 7},
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A saved LoRA adapter (random B, so it changes answers) on 2-layer SmolLM2, with tokenizer."""
    torch.manual_seed(0)
    model = tuners.LoRA(r=4, alpha=8, dropout=0.0).apply(
        models.load_model(SMOLLM2, config_overrides=TWO_LAYERS)
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    folder = tmp_path_factory.mktemp("infer") / "adapter"
    model.save_pretrained(str(folder))
    models.load_tokenizer(SMOLLM2).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def generator(adapter):
    return load_generator(adapter=str(adapter), config_overrides=TWO_LAYERS, device="cpu")


def test_jsonl_rows_get_answers_within_max_new_tokens(generator, tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert answer_file(generator, source, target, Sampling(max_new_tokens=4), batch_size=2) == 3
    out = [json.loads(line) for line in target.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "response"} for r in out] == ROWS
    assert all(isinstance(r["response"], str) and r["response"] for r in out)
    conversations = [c for _, c in read_conversations(source)]
    assert conversations[1] == [{"role": "user", "content": "What is 2+2?"}]  # reference answer dropped
    assert all(len(ids) <= 4 for ids in generator.generate_ids(conversations, Sampling(max_new_tokens=4)))


def test_greedy_is_deterministic_and_left_padding_is_harmless(generator):
    short = [{"role": "user", "content": "Hi"}]
    long = [{"role": "user", "content": "Tell me a long story about a cat and a dog in the garden."}]
    sampling = Sampling(max_new_tokens=6)
    alone = generator.generate_ids([short], sampling)
    assert generator.generate_ids([short], sampling) == alone
    assert generator.generate_ids([long, short], sampling)[1] == alone[0]


def test_sampling_is_seeded(generator):
    sampling = Sampling(max_new_tokens=6, temperature=1.0, top_p=0.9, top_k=50)
    conversation = [[{"role": "user", "content": "Hi"}]]
    torch.manual_seed(1)
    first = generator.generate_ids(conversation, sampling)
    torch.manual_seed(1)
    assert generator.generate_ids(conversation, sampling) == first


def test_multi_token_end_of_turn_is_a_stop_string(generator):
    """llama3's `<|eot_id|>` is several SmolLM2 tokens, so generation stops on it as text."""
    llama3 = Generator(
        generator.model, generator.tokenizer, ChatEncoder(generator.tokenizer, template="llama3")
    )
    assert llama3.stop_strings == ["<|eot_id|>"] and llama3.stop_ids == [generator.tokenizer.eos_token_id]
    [text] = llama3.answer([[{"role": "user", "content": "Hi"}]], Sampling(max_new_tokens=4))
    assert "<|eot_id|>" not in text


def test_interactive_chat_streams_answers(generator, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nclear\nWho are you?\nexit\nnever read\n"))
    chat(generator, Sampling(max_new_tokens=5))
    out = capsys.readouterr().out
    turns = out.split("assistant> ")
    assert len(turns) == 3 and all(t.split("\n")[0].strip() for t in turns[1:])
    assert out.count("user> ") == 4


def test_cli_prompt_prints_the_greedy_answer(generator, adapter, capsys):
    expected = generator.answer([[{"role": "user", "content": "Hi"}]], Sampling(max_new_tokens=5))[0]
    args = ["--adapter", str(adapter), "--config_overrides", json.dumps(TWO_LAYERS), "--max_new_tokens", "5"]
    main(["infer", *args, "--prompt", "Hi", "--device", "cpu"])
    assert capsys.readouterr().out.strip().endswith(expected)


def test_help_lists_export_and_infer(capsys):
    main(["--help"])
    commands = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert "export" in commands and "infer" in commands


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        infer(model=SMOLLM2, prompt="a", messages="[]")
    with pytest.raises(ValueError, match="JSON list"):
        infer(model=SMOLLM2, messages='{"role": "user"}')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"answer": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"2 bad input rows:\n.*bad.jsonl:2: .*\n.*bad.jsonl:3"):
        read_conversations(bad)
    with pytest.raises(ValueError, match="does not exist"):
        read_conversations(tmp_path / "missing.jsonl")
