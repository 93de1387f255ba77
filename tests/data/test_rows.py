"""Every row format normalises to the same canonical row; every bad row fails with a precise reason."""

import json

import pytest

from lit_swift.data.rows import RowError, to_canonical
from lit_swift.types import ChatRow, EmbeddingRow, KTORow, PreferenceRow, PromptRow, TextRow

SYSTEM = {"role": "system", "content": "Be brief."}
HI = {"role": "user", "content": "Hi"}
HELLO = {"role": "assistant", "content": "Hello!"}
ASK = {"role": "user", "content": "What is 2+2?"}
FOUR = {"role": "assistant", "content": "4"}
FIVE = {"role": "assistant", "content": "5"}
CHAT = ChatRow(messages=[SYSTEM, HI, HELLO, ASK, FOUR])


@pytest.mark.parametrize(
    "raw",
    [
        {"messages": [SYSTEM, HI, HELLO, ASK, FOUR]},
        {"messages": [HI, HELLO, ASK, FOUR], "system": "Be brief."},
        {
            "system": "Be brief.",
            "conversations": [
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
                {"from": "user", "value": "What is 2+2?"},
                {"from": "assistant", "value": "4"},
            ],
        },
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                *[{"from": m["role"], "value": m["content"]} for m in (HI, HELLO, ASK, FOUR)],
            ]
        },
        {
            "system": "Be brief.",
            "instruction": "What is 2+2?",
            "input": "",
            "output": "4",
            "history": [["Hi", "Hello!"]],
        },
        {
            "system": "Be brief.",
            "query": "What is 2+2?",
            "response": "4",
            "history": [["Hi", "Hello!"]],
            "id": 7,
        },
        {"system": "Be brief.", "prompt": [HI, HELLO, ASK], "completion": "4"},
        {"system": "Be brief.", "prompt": [HI, HELLO, ASK], "completion": [FOUR]},
    ],
    ids=[
        "messages",
        "messages+system",
        "sharegpt",
        "sharegpt-system-turn",
        "alpaca",
        "query",
        "prompt",
        "prompt-list",
    ],
)
def test_chat_formats_give_the_same_row(raw):
    assert to_canonical(raw, "chat") == CHAT


def test_alpaca_joins_instruction_and_input_like_ms_swift():
    row = to_canonical({"instruction": "Translate:", "input": "bonjour", "output": "hello"}, "chat")
    assert row.messages == [
        {"role": "user", "content": "Translate:\nbonjour"},
        {"role": "assistant", "content": "hello"},
    ]


WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
CALL = {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
TOOL_ROW = ChatRow(
    messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ],
    tools=[WEATHER_TOOL],
)


@pytest.mark.parametrize(
    "raw",
    [
        {
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ],
        },
        {
            "tools": json.dumps([WEATHER_TOOL]),
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "tool_call",
                    "content": json.dumps({"name": "weather", "arguments": {"city": "Paris"}}),
                },
                {"role": "tool_response", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ],
        },
        {
            "tools": [json.dumps(WEATHER_TOOL)],
            "conversations": [
                {"from": "human", "value": "Weather in Paris?"},
                {
                    "from": "function_call",
                    "value": json.dumps({"name": "weather", "arguments": '{"city": "Paris"}'}),
                },
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "Sunny."},
            ],
        },
    ],
    ids=["openai", "ms-swift-tool-roles", "sharegpt-function-call"],
)
def test_tool_formats_give_the_same_row(raw):
    assert to_canonical(raw, "chat") == TOOL_ROW


def test_text_rows():
    assert to_canonical({"text": "Once upon a time"}, "text") == TextRow("Once upon a time")
    assert to_canonical({"content": "Once"}, "text") == TextRow("Once")


PREF = PreferenceRow(messages=[HI, HELLO, ASK], chosen=FOUR, rejected=FIVE)


@pytest.mark.parametrize(
    "raw",
    [
        {"messages": [HI, HELLO, ASK, FOUR], "rejected_response": "5"},
        {"query": "What is 2+2?", "response": "4", "history": [["Hi", "Hello!"]], "rejected_response": "5"},
        {"messages": [HI, HELLO, ASK], "chosen": "4", "rejected": "5"},
        {"messages": [HI, HELLO, ASK], "chosen": FOUR, "rejected": {"content": "5"}},
        {"prompt": [HI, HELLO, ASK], "chosen": [FOUR], "rejected": [FIVE]},
        {"chosen": [HI, HELLO, ASK, FOUR], "rejected": [HI, HELLO, ASK, FIVE]},
        {"prompt": [HI, HELLO, ASK], "chosen": [HI, HELLO, ASK, FOUR], "rejected": [HI, HELLO, ASK, FIVE]},
    ],
    ids=["ms-swift", "ms-swift-query", "strings", "dicts", "trl-explicit", "trl-implicit", "trl-both"],
)
def test_preference_formats_give_the_same_row(raw):
    assert to_canonical(raw, "preference") == PREF


def test_preference_prompt_string_and_system():
    row = to_canonical(
        {"system": "Be brief.", "prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}, "preference"
    )
    assert row == PreferenceRow(messages=[SYSTEM, ASK], chosen=FOUR, rejected=FIVE)


def test_preference_dataset_also_feeds_sft():
    assert (
        to_canonical({"messages": [SYSTEM, HI, HELLO, ASK, FOUR], "rejected_response": "5"}, "chat") == CHAT
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"messages": [HI, HELLO, ASK, FOUR], "label": True},
        {"prompt": [HI, HELLO, ASK], "completion": "4", "label": True},
        {"query": "What is 2+2?", "response": "4", "history": [["Hi", "Hello!"]], "label": 1},
    ],
)
def test_kto_formats(raw):
    assert to_canonical(raw, "kto") == KTORow(messages=[HI, HELLO, ASK], completion=FOUR, label=True)


def test_kto_false_label():
    row = to_canonical({"prompt": "What is 2+2?", "completion": "5", "label": 0}, "kto")
    assert row == KTORow(messages=[ASK], completion=FIVE, label=False)


def test_prompt_rows_keep_extra_columns_and_drop_the_answer():
    row = to_canonical({"messages": [SYSTEM, ASK, FOUR], "solution": "4", "level": 2}, "prompt")
    assert row == PromptRow(messages=[SYSTEM, ASK], extra={"solution": "4", "level": 2, "response": "4"})
    row = to_canonical({"query": "What is 2+2?", "response": "4", "solution": "4"}, "prompt")
    assert row == PromptRow(messages=[ASK], extra={"solution": "4", "response": "4"})
    assert to_canonical({"prompt": "What is 2+2?", "answer": 4}, "prompt") == PromptRow([ASK], {"answer": 4})
    assert to_canonical({"instruction": "What is 2+2?", "task": "math"}, "prompt") == PromptRow(
        [ASK], {"task": "math"}
    )


def test_embedding_formats():
    expected = EmbeddingRow(query="cat", positive="a small feline", negatives=["a car"])
    assert (
        to_canonical({"query": "cat", "positive": "a small feline", "negatives": ["a car"]}, "embedding")
        == expected
    )
    assert (
        to_canonical({"anchor": "cat", "response": "a small feline", "negative": "a car"}, "embedding")
        == expected
    )
    swift = {
        "messages": [{"role": "user", "content": "cat"}],
        "positive_messages": [[{"role": "user", "content": "a small feline"}]],
        "negative_messages": [[{"role": "user", "content": "a car"}]],
    }
    assert to_canonical(swift, "embedding") == expected
    scored = to_canonical({"query": "cat", "positive": "kitten", "score": 0.8}, "embedding")
    assert scored == EmbeddingRow("cat", "kitten", [], 0.8)
    assert to_canonical({"anchor": "cat", "positive": "dog", "label": 0}, "embedding").score == 0.0


def test_column_renames():
    raw = {"question": "What is 2+2?", "answer": "4"}
    row = to_canonical(raw, "chat", columns={"question": "query", "answer": "response"})
    assert row == ChatRow(messages=[ASK, FOUR])
    with pytest.raises(RowError, match="column rename 'question' -> 'query' clashes"):
        to_canonical({**raw, "query": "x"}, "chat", columns={"question": "query"})


def test_consecutive_user_turns_are_allowed():
    row = to_canonical({"messages": [HI, ASK, FOUR]}, "chat")
    assert [m["role"] for m in row.messages] == ["user", "user", "assistant"]


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ValueError, match="unknown row kind 'sft'") as info:
        to_canonical({"text": "x"}, "sft")
    assert not isinstance(info.value, RowError)


BAD = [
    (
        {"foo": 1, "bar": 2},
        "chat",
        "row has none of the columns of a known chat format: keys ['bar', 'foo']; expected one of: messages",
        "no_format",
    ),
    ({"messages": [HI], "label": "yes"}, "embedding", "known embedding format", "no_format"),
    (["a"], "chat", "row is a list, expected an object", "bad_type"),
    ({"messages": "hi"}, "chat", "'messages' must be a non-empty list of turns, got str", "bad_type"),
    ({"messages": []}, "chat", "'messages' must be a non-empty list", "bad_type"),
    ({"messages": [{"content": "hi"}, FOUR]}, "chat", "messages[0] has no role", "bad_role"),
    (
        {"messages": [{"role": "bot", "content": "hi"}, FOUR]},
        "chat",
        "messages[0] has unknown role 'bot'",
        "bad_role",
    ),
    (
        {"conversations": [{"from": "robot", "value": "hi"}]},
        "chat",
        "conversations[0] has unknown role 'robot'",
        "bad_role",
    ),
    (
        {"messages": [ASK, {"role": "assistant", "content": "  "}]},
        "chat",
        "assistant turn at position 1 is empty",
        "empty_answer",
    ),
    (
        {"messages": [ASK, {"role": "assistant", "content": 4}]},
        "chat",
        "messages[1] content must be a string, got int",
        "bad_type",
    ),
    (
        {"messages": [HI, HELLO, ASK]},
        "chat",
        "chat row must end with an assistant turn, not 'user'",
        "no_answer",
    ),
    ({"query": "q"}, "chat", "must end with an assistant turn", "no_answer"),
    ({"messages": [ASK, SYSTEM, FOUR]}, "chat", "system turn at position 1", "bad_order"),
    (
        {"messages": [{"role": "tool", "content": "x"}, FOUR]},
        "chat",
        "tool turn at position 0 must follow",
        "bad_order",
    ),
    ({"messages": [SYSTEM, FOUR]}, "chat", "conversation has no user turn", "bad_order"),
    ({"messages": [SYSTEM, ASK, FOUR], "system": "again"}, "chat", "system prompt given twice", "bad_order"),
    ({"messages": [ASK, FOUR], "tools": "{not json"}, "chat", "'tools' is not valid JSON", "bad_json"),
    (
        {"messages": [ASK, FOUR], "tools": 3},
        "chat",
        "'tools' must be a list of tool schemas, got int",
        "bad_type",
    ),
    (
        {"messages": [ASK, {"role": "tool_call", "content": "{}"}]},
        "chat",
        "messages[1][0] has no function name",
        "bad_type",
    ),
    (
        {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}, FOUR]},
        "chat",
        "only assistant turns call tools",
        "bad_type",
    ),
    (
        {"query": "q", "response": "r", "history": [["a"]]},
        "chat",
        "history[0] must be a [query, response] pair",
        "bad_type",
    ),
    ({"query": "q", "response": "r", "system": 1}, "chat", "'system' must be a string, got int", "bad_type"),
    ({"text": "   "}, "text", "'text' is empty", "empty_answer"),
    ({"text": ["a"]}, "text", "'text' must be a string, got list", "bad_type"),
    (
        {"messages": [ASK, FOUR], "rejected_response": "4"},
        "preference",
        "chosen and rejected answers are identical",
        "identical",
    ),
    (
        {"messages": [ASK], "rejected_response": "4"},
        "preference",
        "needs the chosen answer as the final turn",
        "no_answer",
    ),
    (
        {"prompt": "q", "chosen": "a", "rejected": ""},
        "preference",
        "assistant turn at position 1 is empty",
        "empty_answer",
    ),
    (
        {"prompt": "q", "chosen": "a", "rejected": {"role": "user", "content": "b"}},
        "preference",
        "'rejected' must end with an assistant turn",
        "bad_role",
    ),
    (
        {"chosen": [HI, FOUR], "rejected": [ASK, FIVE]},
        "preference",
        "differ before the answer",
        "bad_order",
    ),
    (
        {"messages": [ASK, FOUR], "chosen": "4", "rejected": "5"},
        "preference",
        "the prompt must end with a user or tool turn, but its last turn is 'assistant'",
        "bad_order",
    ),
    (
        {"prompt": "q", "chosen": 4, "rejected": "b"},
        "preference",
        "'chosen' must be a string, a message or a list of messages, got int",
        "bad_type",
    ),
    ({"prompt": "q", "chosen": "a"}, "preference", "known preference format", "no_format"),
    (
        {"messages": [ASK, FOUR], "label": "true"},
        "kto",
        "'label' must be a boolean (true/false or 0/1), got str 'true'",
        "bad_label",
    ),
    ({"messages": [ASK, FOUR], "label": 2}, "kto", "got int 2", "bad_label"),
    ({"messages": [ASK, FOUR]}, "kto", "known kto format", "no_format"),
    ({"messages": [ASK], "label": True}, "kto", "KTO row must end with the completion", "no_answer"),
    (
        {"messages": [SYSTEM]},
        "prompt",
        "the prompt must end with a user or tool turn, but its last turn is 'system'",
        "bad_order",
    ),
    ({"query": "", "positive": "p"}, "embedding", "'query' is empty", "empty_answer"),
    (
        {"query": "q", "positive": "p", "negatives": "n", "score": "high"},
        "embedding",
        "'score'/'label' must be a number, got str",
        "bad_type",
    ),
    (
        {"query": "q", "positive": "p", "negatives": [1]},
        "embedding",
        "'negatives[0]' must be a string, got int",
        "bad_type",
    ),
]


@pytest.mark.parametrize(("raw", "kind", "reason", "code"), BAD, ids=[b[2][:40] for b in BAD])
def test_bad_rows_give_precise_reasons(raw, kind, reason, code):
    with pytest.raises(RowError) as info:
        to_canonical(raw, kind)
    assert reason in info.value.reason
    assert info.value.code == code
