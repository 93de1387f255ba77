"""Chat templates: literal renderings and loss masks per named template, the tokenizer-native path on SmolLM2."""

from __future__ import annotations

import copy
import json

import pytest

from lit_swift import models
from lit_swift.data.preview import preview
from lit_swift.data.template import (
    TEMPLATES,
    ChatEncoder,
    TemplateError,
    check_labels,
    from_name,
    tokenize_segments,
    truncate,
)
from lit_swift.types import IGNORE_INDEX, ChatRow, EncodedSample

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]
# For each template: the literal (text, trained) segmentation of CHAT; the rendering is their join,
# also written out below. alpaca/default close answers with the tokenizer's eos (SmolLM2: <|im_end|>).
GOLDEN_SEGMENTS = {
    "chatml": [
        (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("Hello!<|im_end|>", True),
        ("\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("4<|im_end|>", True),
        ("\n", False),
    ],
    "qwen": [
        (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("Hello!<|im_end|>", True),
        ("\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", False),
        ("4<|im_end|>", True),
        ("\n", False),
    ],
    "llama3": [
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            False,
        ),
        ("Hello!<|eot_id|>", True),
        (
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            False,
        ),
        ("4<|eot_id|>", True),
    ],
    "mistral": [
        ("<s>[INST] Be brief.\n\nHi [/INST]", False),
        ("Hello!</s>", True),
        ("[INST] 2+2? [/INST]", False),
        ("4</s>", True),
    ],
    "gemma": [
        ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n", False),
        ("Hello!<end_of_turn>", True),
        ("\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n", False),
        ("4<end_of_turn>", True),
        ("\n", False),
    ],
    "phi3": [
        ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", False),
        ("Hello!<|end|>", True),
        ("\n<|user|>\n2+2?<|end|>\n<|assistant|>\n", False),
        ("4<|end|>", True),
        ("\n", False),
    ],
    "deepseek": [
        ("<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi\n\nAssistant:", False),
        (" Hello!<｜end▁of▁sentence｜>", True),
        ("User: 2+2?\n\nAssistant:", False),
        (" 4<｜end▁of▁sentence｜>", True),
    ],
    "alpaca": [
        ("Be brief.\n\n### Instruction:\nHi\n\n### Response:\n", False),
        ("Hello!<|im_end|>", True),
        ("\n\n### Instruction:\n2+2?\n\n### Response:\n", False),
        ("4<|im_end|>", True),
        ("\n\n", False),
    ],
    "default": [
        ("Be brief.\n\n### Human:\nHi\n\n### Assistant:\n", False),
        ("Hello!<|im_end|>", True),
        ("\n\n### Human:\n2+2?\n\n### Assistant:\n", False),
        ("4<|im_end|>", True),
        ("\n\n", False),
    ],
}
GOLDEN_TEXT = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "qwen": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
    "mistral": "<s>[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] 2+2? [/INST]4</s>",
    "gemma": "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
    "<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
    "<|user|>\n2+2?<|end|>\n<|assistant|>\n4<|end|>\n",
    "deepseek": "<｜begin▁of▁sentence｜>Be brief.\n\nUser: Hi\n\nAssistant: Hello!<｜end▁of▁sentence｜>"
    "User: 2+2?\n\nAssistant: 4<｜end▁of▁sentence｜>",
    "alpaca": "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!<|im_end|>\n\n"
    "### Instruction:\n2+2?\n\n### Response:\n4<|im_end|>\n\n",
    "default": "Be brief.\n\n### Human:\nHi\n\n### Assistant:\nHello!<|im_end|>\n\n"
    "### Human:\n2+2?\n\n### Assistant:\n4<|im_end|>\n\n",
}
STOP = {
    "chatml": "<|im_end|>",
    "qwen": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "gemma": "<end_of_turn>",
    "phi3": "<|end|>",
    "deepseek": "<｜end▁of▁sentence｜>",
    "alpaca": "<|im_end|>",
    "default": "<|im_end|>",
}
SPECIAL_TOKENS = {
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "mistral": ["<s>", "</s>"],
    "gemma": ["<bos>", "<start_of_turn>", "<end_of_turn>"],
    "phi3": ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    "deepseek": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
}
SMOL_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)
# Inserts an empty think block after the assistant header of every answer, but not in the
# generation prompt (as Qwen3 does for the final answer): the prefix property alone cannot see it.
THINK_JINJA = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + m['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("smollm2-135m-instruct")


def with_jinja(tok, template: str):
    other = copy.deepcopy(tok)
    other.chat_template = template
    return other


def trained_text(tok, sample: EncodedSample) -> str:
    return tok.decode([x for x in sample.labels if x != IGNORE_INDEX], skip_special_tokens=False)


def test_golden_tables_cover_every_template():
    assert set(GOLDEN_SEGMENTS) == set(GOLDEN_TEXT) == set(STOP) == set(TEMPLATES)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_named_template_golden(tok, name):
    encoder = ChatEncoder(tok, template=name)
    assert encoder.render_text(CHAT) == GOLDEN_TEXT[name]
    assert encoder.segments(CHAT) == GOLDEN_SEGMENTS[name]
    assert encoder.stop_strings == [STOP[name]]
    # Prefix property: each generation prompt extends the previous turns and starts the next answer.
    answers = [text for text, trained in GOLDEN_SEGMENTS[name] if trained]
    for num_messages, answer in zip((2, 4), answers, strict=True):
        prompt = encoder.render_text(CHAT[:num_messages], add_generation_prompt=True)
        assert GOLDEN_TEXT[name].startswith(prompt + answer)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_named_template_tokens(tok, name):
    # SmolLM2 stands in for each family's tokenizer, given that family's special tokens.
    family = copy.deepcopy(tok)
    family.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS.get(name, [])})
    encoder = ChatEncoder(family, template=name)
    sample = encoder.encode(ChatRow(CHAT))
    assert sample.input_ids == family(GOLDEN_TEXT[name], add_special_tokens=False).input_ids
    answers = [text for text, trained in GOLDEN_SEGMENTS[name] if trained]
    assert trained_text(family, sample) == "".join(answers)
    assert encoder.stop_token_ids == family.convert_tokens_to_ids([STOP[name]])


def test_unknown_template_lists_names(tok):
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'.*chatml, qwen, llama3"):
        ChatEncoder(tok, template="vicuna")
    assert from_name("qwen").default_system == "You are a helpful assistant."


def test_chatml_equals_smollm2_native_when_system_given(tok):
    native = ChatEncoder(tok).encode(ChatRow(CHAT))
    assert ChatEncoder(tok, template="chatml").encode(ChatRow(CHAT)) == native


def test_stop_token_ids(tok):
    assert ChatEncoder(tok).stop_strings == ["<|im_end|>"]
    assert ChatEncoder(tok).stop_token_ids == [2]
    assert ChatEncoder(tok, template="llama3").stop_token_ids == []  # not one SmolLM2 token


@pytest.mark.parametrize("messages", [CHAT, CHAT[1:]], ids=["system", "default-system"])
@pytest.mark.parametrize(
    ("loss_on", "expected"),
    [
        ("assistant", "Hello!<|im_end|>4<|im_end|>"),
        ("last_assistant", "4<|im_end|>"),
    ],
)
def test_native_ids_and_labels(tok, messages, loss_on, expected):
    sample = ChatEncoder(tok, loss_on=loss_on).encode(ChatRow(messages))
    assert sample.input_ids == tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert trained_text(tok, sample) == expected


def test_native_loss_on_all_and_default_system(tok):
    encoder = ChatEncoder(tok, loss_on="all")
    sample = encoder.encode(ChatRow(CHAT[1:3]))
    assert sample.labels == sample.input_ids
    assert (
        trained_text(tok, sample)
        == SMOL_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    )


def test_system_override_and_template_defaults(tok):
    native = ChatEncoder(tok, system="Be kind.")
    assert native.render_text(CHAT[1:3]).startswith(
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\n"
    )
    assert native.render_text(CHAT).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n"
    )  # the row's own wins
    assert ChatEncoder(tok, template="qwen").render_text(CHAT[1:3]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert ChatEncoder(tok, template="qwen", system="Be kind.").render_text(CHAT[1:2]) == (
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    )
    assert ChatEncoder(tok, template="chatml").render_text(CHAT[1:2]) == "<|im_start|>user\nHi<|im_end|>\n"
    assert ChatEncoder(tok, template="alpaca").render_text(CHAT[1:2], add_generation_prompt=True) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nHi\n\n### Response:\n"
    )


def test_prompt_ids_and_encode_completion(tok):
    encoder = ChatEncoder(tok, template="gemma")
    assert tok.decode(encoder.prompt_ids(CHAT[:2])) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    native = ChatEncoder(tok)
    assert native.prompt_ids(CHAT[:2]) == tok.apply_chat_template(
        CHAT[:2], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    sample = native.encode_completion(CHAT[:4], CHAT[4])
    assert trained_text(tok, sample) == "4<|im_end|>"
    assert native.loss_on == "assistant"


def test_qwen_tools_and_tool_results(tok):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    call = {"type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "4"},
        {"role": "tool", "content": "ok"},
        {"role": "assistant", "content": "4"},
    ]
    assert ChatEncoder(tok, template="qwen").segments(messages, tools) == [
        (
            "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to "
            "assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML "
            'tags:\n<tools>\n{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}\n'
            "</tools>\n\nFor each function call, return a json object with function name and arguments within "
            '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
            "<args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ('<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n</tool_call><|im_end|>', True),
        (
            "\n<|im_start|>user\n<tool_response>\n4\n</tool_response>\n<tool_response>\nok\n</tool_response>"
            "<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("4<|im_end|>", True),
        ("\n", False),
    ]
    assert ChatEncoder(tok, template="llama3").render_text(messages[2:3]) == (
        "<|begin_of_text|><|start_header_id|>ipython<|end_header_id|>\n\n4<|eot_id|>"
    )
    assert ChatEncoder(tok, template="chatml").render_text([{**messages[1], "content": "Sure."}]) == (
        '<|im_start|>assistant\nSure.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n'
        "</tool_call><|im_end|>\n"
    )


def test_prefix_violation_names_the_template(tok):
    # The generation prompt says "bot" but answers are rendered under "assistant".
    bad = with_jinja(
        tok,
        THINK_JINJA.replace("'<|im_start|>assistant\n' }}{% endif %}", "'<|im_start|>bot\n' }}{% endif %}"),
    )
    bad.name_or_path = "odd-model"
    with pytest.raises(TemplateError, match="tokenizer chat template of odd-model.*not a prefix"):
        ChatEncoder(bad).encode(ChatRow(CHAT))


def test_template_inserted_think_prefix_is_not_trained(tok):
    think = with_jinja(tok, THINK_JINJA)
    messages = CHAT[1:3]
    sample = ChatEncoder(think).encode(ChatRow(messages))
    assert sample.input_ids == think.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert trained_text(tok, sample) == "Hello!<|im_end|>"
    trained = ChatEncoder(think, train_think_prefix=True).encode(ChatRow(messages))
    assert trained.input_ids == sample.input_ids
    assert trained_text(tok, trained) == "<think>\n\n</think>\n\nHello!<|im_end|>"


def test_drop_empty_think(tok):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\n\n</think>\n\nHello!"},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "<think>Because.</think>\nSo."},
    ]
    kept = ChatEncoder(tok, template="chatml").encode(ChatRow(messages))
    assert (
        trained_text(tok, kept)
        == "<think>\n\n</think>\n\nHello!<|im_end|><think>Because.</think>\nSo.<|im_end|>"
    )
    dropped = ChatEncoder(tok, template="chatml", drop_empty_think=True)
    assert trained_text(tok, dropped.encode(ChatRow(messages))) == (
        "Hello!<|im_end|><think>Because.</think>\nSo.<|im_end|>"
    )
    native = ChatEncoder(tok, drop_empty_think=True)  # the message's own (non-empty) think is trained
    assert trained_text(tok, native.encode(ChatRow(messages))) == (
        "Hello!<|im_end|><think>Because.</think>\nSo.<|im_end|>"
    )
    assert messages[1]["content"] == "<think>\n\n</think>\n\nHello!"  # input not mutated


def test_space_after_header_token_is_trained(tok):
    # deepseek renders "Assistant: Hello!": the token " Hello" starts with the template's space.
    sample = ChatEncoder(tok, template="deepseek").encode(ChatRow(CHAT[1:3]))
    first = next(x for x in sample.labels if x != IGNORE_INDEX)
    assert tok.decode([first]) == " Hello"
    sample = tokenize_segments(tok, [("Assistant:", False), (" Hello", True)])
    assert tok.convert_ids_to_tokens(sample.input_ids) == ["Ass", "istant", ":", "ĠHello"]
    assert sample.labels == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, sample.input_ids[-1]]


def test_empty_labels_raise_by_default(tok):
    row = ChatRow([{"role": "user", "content": "Hi"}])
    with pytest.raises(
        ValueError, match=r"data.jsonl:3 \(the conversation has no assistant message.*no token carries"
    ):
        ChatEncoder(tok).encode(row, where="data.jsonl:3")
    with pytest.raises(ValueError, match="chat template 'chatml'.*no assistant message"):
        ChatEncoder(tok, template="chatml").encode(row)
    assert ChatEncoder(tok, allow_empty_labels=True).encode(row).num_label_tokens == 0


def test_check_labels_after_truncation(tok):
    sample = ChatEncoder(tok).encode(ChatRow(CHAT))
    (kept,) = truncate(sample, 10, "right")
    with pytest.raises(
        ValueError, match=r"^train.jsonl:7: no token carries a label \(10 tokens\).*truncation"
    ):
        check_labels(kept, "train.jsonl:7")
    (tail,) = truncate(sample, 10, "left")
    assert check_labels(tail, "train.jsonl:7") is tail


def test_truncate_modes():
    sample = EncodedSample([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5])
    assert truncate(sample, 5, "drop") == [sample]
    assert truncate(sample, 2, "right") == [EncodedSample([1, 2], [-100, -100])]
    assert truncate(sample, 2, "left") == [EncodedSample([4, 5], [4, 5])]
    assert truncate(sample, 2, "drop") == []
    assert truncate(sample, 2, "split") == [
        EncodedSample([1, 2], [-100, -100]),
        EncodedSample([3, 4], [3, 4]),
        EncodedSample([5], [5]),
    ]


def test_preview(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": CHAT[1:3]},
        {"messages": CHAT},
        {"messages": [{"role": "user", "content": "Hi"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    report = preview("smollm2-135m-instruct", str(path), num_rows=1, template="chatml", max_length=20)
    lines = report.splitlines()
    assert lines[0] == f"{path} encoded with chat template 'chatml', loss_on=assistant; trained text in ⟦ ⟧"
    assert lines[1:6] == [
        f"--- {path}:1: 14 tokens, 3 trained",
        "<|im_start|>user",
        "Hi<|im_end|>",
        "<|im_start|>assistant",
        "⟦Hello!<|im_end|>⟧",
    ]
    assert f"--- {path}:2" not in report  # num_rows=1
    stats = report[report.index("--- statistics") :].splitlines()
    assert stats == [
        "--- statistics",
        "rows: 2",
        "tokens per row: min 14, mean 26.0, max 38, total 52",
        "trained tokens: 8 (15.4% of all tokens)",
        "rows longer than max_length 20: 1",
        "--- 2 problem row(s)",
        f"{path}:3: chat row must end with an assistant turn, not 'user'",
        f"{path}:4: invalid JSON at column 1: Expecting value",
    ]


def test_preview_marks_the_max_length_cut(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    report = preview("smollm2-135m-instruct", str(path), template="chatml", max_length=20)
    shown = report[report.index("\n") + 1 : report.index("--- statistics")]
    assert shown == (
        f"--- {path}:1: 38 tokens, 5 trained\n"
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n⟦Hello!⟧\n"
        "✂ --- max_length 20: the rest is cut by truncation=right --- ✂\n"
        "⟦<|im_end|>⟧\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n⟦4<|im_end|>⟧\n\n"
    )
