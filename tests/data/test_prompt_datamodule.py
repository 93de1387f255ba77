"""Prompt DataModule: left-padded prompts ending in the assistant header, extra columns kept."""

from __future__ import annotations

import json

import pytest

from lit_swift.data.plan import MicroBatch
from lit_swift.data.prompts import PromptDataModule

ROWS = [
    {"messages": [{"role": "user", "content": "What is 2 + 3?"}], "solution": "5"},
    {"prompt": "Add 10 and 20, then double it.", "solution": "60"},
    {"query": "Hi", "solution": "-"},
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def test_left_padded_prompts_keep_extra_columns(data_file, smollm2_tokenizer):
    dm = PromptDataModule("smollm2-135m-instruct", data_file, shuffle=False, batch_size=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape[0] == 3 and (mask[:, -1] == 1).all()  # every prompt ends at the right edge
    header = smollm2_tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    assert ids[:, -len(header) :].tolist() == [header] * 3
    for b in range(3):
        real = ids[b][mask[b] == 1].tolist()
        assert real == dm.encoder.prompt_ids(dm._read([data_file])[b][0].messages)
        assert batch["position_ids"][b][mask[b] == 1].tolist() == list(range(len(real)))
    assert [e["solution"] for e in batch["extra"]] == ["5", "60", "-"]
    assert batch["step_num_rows"] == 3


def test_long_prompts_are_cut_at_the_start_or_dropped(data_file, caplog):
    """Rendered with SmolLM2's default system prompt the three prompts are 38, 43 and 31 tokens."""
    left = PromptDataModule("smollm2-135m-instruct", data_file, max_prompt_length=35, shuffle=False)
    with caplog.at_level("INFO"):
        left.setup("fit")
    ids, extras = left.train_prompts
    assert [len(p) for p in ids] == [35, 35, 31] and [e["solution"] for e in extras] == ["5", "60", "-"]
    assert "2 prompt(s) longer than 35 tokens, truncation=left" in caplog.text
    drop = PromptDataModule("smollm2-135m-instruct", data_file, max_prompt_length=35, truncation="drop")
    drop.setup("fit")
    assert [e["solution"] for e in drop.train_prompts[1]] == ["-"]
    none_fit = PromptDataModule("smollm2-135m-instruct", data_file, max_prompt_length=10, truncation="drop")
    with pytest.raises(ValueError, match="every training prompt is longer"):
        none_fit.setup("fit")


def test_collate_pads_on_the_left():
    from lit_swift.data.prompts import PromptBatches

    batch = PromptBatches([[5, 6, 7], [8]], [{}, {"k": 1}], pad_id=0)[MicroBatch(((0,), (1,)), 2)]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch["row_ids"].tolist() == [0, 1] and batch["extra"] == [{}, {"k": 1}]
