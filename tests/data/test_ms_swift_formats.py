"""Every example row format of ms-swift's custom-dataset docs loads verbatim (issue 13, item 9).

The rows below are written as ms-swift's docs write them (docs/source_en/Customization/Custom-dataset.md
and BestPractices/Embedding.md): each is read from a real .jsonl file by `sources.load_mixture` and must
become the intended canonical row; chat rows are then encoded with the `chatml` template and the trained
text is checked (labels on the assistant answers and tool calls only).
"""

from __future__ import annotations

import json

import pytest

from lit_swift.data.sources import DatasetSpec, load_mixture
from lit_swift.data.template import ChatEncoder
from lit_swift.types import IGNORE_INDEX, ChatRow, EmbeddingRow, KTORow, PreferenceRow, PromptRow

SYSTEM = {"role": "system", "content": "You are a useful and harmless math calculator"}
Q1, A1 = {"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "It equals 2"}
Q2, A2 = {"role": "user", "content": "What about adding 1?"}, {"role": "assistant", "content": "It equals 3"}
MESSAGES = [SYSTEM, Q1, A1, Q2, A2]
TOOLS = (
    '[{"type": "function", "function": {"name": "realtime_aqi", "description": "Weather forecast. Get real-time '
    'air quality, including current air quality, PM2.5, and PM10 information.", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string", "description": "City name, e.g., Shanghai"}}, "required": ["city"]}}}]'
)
AGENT = {
    "tools": TOOLS,
    "messages": [
        {"role": "user", "content": "What is the weather like in Beijing and Shanghai today?"},
        {"role": "tool_call", "content": '{"name": "realtime_aqi", "arguments": {"city": "Beijing"}}'},
        {"role": "tool_call", "content": '{"name": "realtime_aqi", "arguments": {"city": "Shanghai"}}'},
        {"role": "tool_response", "content": '{"city": "Beijing", "aqi": "10", "unit": "celsius"}'},
        {"role": "tool_response", "content": '{"city": "Shanghai", "aqi": "72", "unit": "fahrenheit"}'},
        {"role": "assistant", "content": "AQI: Beijing 10 (good), Shanghai 72 (mild pollution)."},
    ],
}


def call(city: str) -> dict:
    return {"type": "function", "function": {"name": "realtime_aqi", "arguments": {"city": city}}}


def load(tmp_path, row: dict, kind: str):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    rows, report = load_mixture([DatasetSpec(str(path))], kind)
    assert report.num_kept == 1
    return rows[0][0]


CHAT_CASES = {
    "messages": ({"messages": MESSAGES}, MESSAGES),
    "sharegpt": (
        {
            "system": SYSTEM["content"],
            "conversation": [
                {"human": Q1["content"], "assistant": A1["content"]},
                {"human": Q2["content"], "assistant": A2["content"]},
            ],
        },
        MESSAGES,
    ),
    "alpaca": (
        {"system": SYSTEM["content"], "instruction": "What is", "input": "1 + 1?", "output": "It equals 2"},
        [SYSTEM, {"role": "user", "content": "What is\n1 + 1?"}, A1],
    ),
    "query_response_history": (
        {
            "system": SYSTEM["content"],
            "query": Q2["content"],
            "response": A2["content"],
            "history": [[Q1["content"], A1["content"]]],
        },
        MESSAGES,
    ),
    "agent": (
        AGENT,
        [
            AGENT["messages"][0],
            {"role": "assistant", "content": "", "tool_calls": [call("Beijing"), call("Shanghai")]},
            {"role": "tool", "content": AGENT["messages"][3]["content"]},
            {"role": "tool", "content": AGENT["messages"][4]["content"]},
            AGENT["messages"][5],
        ],
    ),
    "multimodal": (
        {
            "messages": [
                {"role": "user", "content": "<image><image>What is the difference between the two images?"},
                {"role": "assistant", "content": "The first one is a kitten, and the second one is a puppy."},
            ],
            "images": ["/xxx/x.jpg", "/xxx/x.png"],
        },
        [
            {"role": "user", "content": "<image><image>What is the difference between the two images?"},
            {"role": "assistant", "content": "The first one is a kitten, and the second one is a puppy."},
        ],
    ),
}


@pytest.mark.parametrize("name", CHAT_CASES)
def test_chat_formats_encode_to_the_intended_messages_and_mask(name, tmp_path, smollm2_tokenizer):
    raw, messages = CHAT_CASES[name]
    row = load(tmp_path, raw, "chat")
    assert isinstance(row, ChatRow) and row.messages == messages
    if name == "agent":
        assert row.tools == json.loads(TOOLS)  # the JSON string parsed to the schema list
    if name == "multimodal" and hasattr(row, "images"):  # the field itself arrives with multimodal support
        assert row.images == raw["images"]
    sample = ChatEncoder(smollm2_tokenizer, template="chatml").encode(row, "rows.jsonl:1")
    trained = smollm2_tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX])
    answers = []
    for m in messages:
        if m["role"] == "assistant":
            calls = [
                json.dumps({"name": "realtime_aqi", "arguments": c["function"]["arguments"]})
                for c in m.get("tool_calls", [])
            ]
            blocks = "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)
            answers.append(m["content"] + blocks + "<|im_end|>")
    assert trained == "".join(answers)


def test_dpo_rejected_response_and_rejected_messages(tmp_path):
    row = load(tmp_path, {"messages": MESSAGES, "rejected_response": "I don't know"}, "preference")
    assert isinstance(row, PreferenceRow)
    assert (row.messages, row.chosen, row.rejected) == (
        MESSAGES[:-1],
        A2,
        {"role": "assistant", "content": "I don't know"},
    )
    rejected = [*MESSAGES[:-1], {"role": "assistant", "content": "It equals 4"}]
    row = load(tmp_path, {"messages": MESSAGES, "rejected_messages": rejected}, "preference")
    assert (row.messages, row.chosen, row.rejected) == (MESSAGES[:-1], A2, rejected[-1])
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": MESSAGES, "rejected_messages": [Q1, A1]}) + "\n")
    with pytest.raises(
        ValueError, match="bad.jsonl:1: 'messages' and 'rejected_messages' differ before their last turn"
    ):
        load_mixture([DatasetSpec(str(path))], "preference")


def test_kto_label(tmp_path):
    raw = {"messages": [SYSTEM, Q1, {"role": "assistant", "content": "I don't know"}], "label": False}
    row = load(tmp_path, raw, "kto")
    assert isinstance(row, KTORow) and row.label is False and row.messages == [SYSTEM, Q1]
    assert row.completion == {"role": "assistant", "content": "I don't know"}


def test_grpo_prompt_keeps_extra_columns_for_rewards(tmp_path):
    row = load(tmp_path, {"messages": [SYSTEM, Q1, A1, Q2], "solution": "3"}, "prompt")
    assert (
        isinstance(row, PromptRow) and row.messages == [SYSTEM, Q1, A1, Q2] and row.extra == {"solution": "3"}
    )


def test_embedding_and_reranker_positive_negative_messages(tmp_path):
    raw = {
        "messages": [{"role": "user", "content": "sentence1"}],
        "positive_messages": [[{"role": "user", "content": "sentence2"}]],
        "negative_messages": [
            [{"role": "user", "content": "sentence3"}],
            [{"role": "user", "content": "sentence4"}],
        ],
    }
    assert load(tmp_path, raw, "embedding") == EmbeddingRow(
        "sentence1", "sentence2", ["sentence3", "sentence4"]
    )
    scored = {"messages": raw["messages"], "positive_messages": raw["positive_messages"], "label": 0.8}
    assert load(tmp_path, scored, "embedding") == EmbeddingRow("sentence1", "sentence2", [], 0.8)
    rerank = {
        "messages": [{"role": "user", "content": "query"}],
        "positive_messages": [[{"role": "assistant", "content": "positive"}]],
        "negative_messages": [[{"role": "assistant", "content": "negative"}]],
    }
    assert load(tmp_path, rerank, "embedding") == EmbeddingRow("query", "positive", ["negative"])
