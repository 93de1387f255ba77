"""Content a template cannot render stops the encode with file:line and the fix (issue 13, item 1).

SmolLM2's own chat template ignores `tools` and `tool_calls`: before the render check, a tool-calling row
trained an empty answer where the call should be and never showed the tool schema.
"""

from __future__ import annotations

import copy
import json

import pytest

from lit_swift.data.datamodule import SFTDataModule
from lit_swift.data.template import ChatEncoder, TemplateError
from lit_swift.types import IGNORE_INDEX, ChatRow

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
AGENT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": '{"temp": 22}'},
    {"role": "assistant", "content": "It is 22 degrees."},
]


def test_native_template_dropping_tool_calls_and_tools_is_an_error(smollm2_tokenizer):
    encoder = ChatEncoder(smollm2_tokenizer)
    with pytest.raises(TemplateError) as info:
        encoder.encode(ChatRow(AGENT, TOOLS), "agent.jsonl:7")
    msg = str(info.value)
    assert msg.startswith("agent.jsonl:7: tokenizer chat template of ")
    assert (
        "does not render the tool call 'get_weather' of message 1, tool 'get_weather' of the tools list"
        in msg
    )
    assert "(set `template: chatml`, which renders tools and tool calls" in msg


def test_chatml_renders_tools_calls_and_results_and_trains_the_call(smollm2_tokenizer):
    encoder = ChatEncoder(smollm2_tokenizer, template="chatml")
    sample = encoder.encode(ChatRow(AGENT, TOOLS), "agent.jsonl:7")
    text = smollm2_tokenizer.decode(sample.input_ids)
    assert (
        '<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Current weather'
        in text
    )
    assert '<|im_start|>tool\n{"temp": 22}<|im_end|>' in text
    trained = smollm2_tokenizer.decode([t for t in sample.labels if t != IGNORE_INDEX])
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert trained == call + "It is 22 degrees.<|im_end|>"


def test_dropped_system_prompt_and_think_are_errors(smollm2_tokenizer):
    no_system = copy.copy(smollm2_tokenizer)
    no_system.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    chat = [
        {"role": "system", "content": "Be brief."},
        *AGENT[:1],
        {"role": "assistant", "content": "Sunny."},
    ]
    with pytest.raises(TemplateError, match="does not render the system content of message 0"):
        ChatEncoder(no_system).encode(ChatRow(chat), "a.jsonl:1")
    strip_think = copy.copy(smollm2_tokenizer)  # a template that drops every answer's reasoning
    strip_think.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
        "{{ m['content'].split('</think>')[-1].lstrip() }}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    think = [
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "<think>easy</think>2"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    with pytest.raises(TemplateError, match="does not render the assistant content of message 1"):
        ChatEncoder(strip_think).encode(ChatRow(think), "a.jsonl:2")


def test_training_stops_at_the_row_with_its_file_and_line(tmp_path, smollm2_dir):
    path = tmp_path / "agent.jsonl"
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
    path.write_text(
        json.dumps(plain) + "\n" + json.dumps({"messages": AGENT, "tools": json.dumps(TOOLS)}) + "\n"
    )
    with pytest.raises(TemplateError, match=rf"{path}:2: tokenizer chat template of .* `template: chatml`"):
        SFTDataModule(smollm2_dir, str(path), encode_cache=False).setup("fit")
    dm = SFTDataModule(smollm2_dir, str(path), template="chatml", encode_cache=False)
    dm.setup("fit")
    assert len(dm.train_samples) == 2


def test_rl_prompts_are_checked_too(smollm2_tokenizer):
    prompt = [{"role": "user", "content": "Weather in Paris?"}]
    with pytest.raises(TemplateError, match="prompts.jsonl:3: .* tool 'get_weather' of the tools list"):
        ChatEncoder(smollm2_tokenizer).prompt_ids(prompt, TOOLS, "prompts.jsonl:3")
    assert ChatEncoder(smollm2_tokenizer, template="chatml").prompt_ids(prompt, TOOLS, "prompts.jsonl:3")
