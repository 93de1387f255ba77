"""Messages -> EncodedSample: token ids plus labels decided once, at encode time, by role.

The tokenizer's own Jinja chat template (default) or a named template from `TEMPLATES` renders the
conversation into (text, trained) segments; `tokenize_segments` tokenizes the joined text once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from lit_swift.types import IGNORE_INDEX, ChatRow, EncodedSample, Message

LossOn = Literal["assistant", "last_assistant", "all"]
Truncation = Literal["right", "left", "drop", "split"]
Segment = tuple[str, bool]
"""A piece of rendered text and whether its tokens carry labels."""

EMPTY_THINK = re.compile(r"<think>\s*</think>\s*")
THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": '
    "<args-json-object>}}\n</tool_call>"
)
"""Hermes/Qwen2.5 tool instructions that named templates append to the system prompt."""


class TemplateError(ValueError):
    """The chat template cannot give a reliable loss mask for these messages."""


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format as plain strings, for models whose tokenizer has no usable Jinja template.

    A turn is `prefix + content + suffix`. An assistant turn is the header `assistant[0]` (not
    trained), the answer `answer_lead + content [+ tool calls] + eot` (trained), then `assistant[1]`
    (not trained). Tools follow Hermes/Qwen2.5: definitions go into the system prompt (`TOOLS_PROMPT`),
    calls are `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` blocks after the content.

    Args:
        user: (prefix, suffix) around a user message.
        assistant: (header, after): text before the answer and after its end-of-turn text.
        tool: (prefix, suffix) around a tool result (a `tool` message).
        system: (prefix, suffix) around a system prompt; None where the model has no system role: the
            system prompt then opens the next user message, followed by a blank line.
        eot: end-of-turn text closing each answer, where generation stops; None: the tokenizer's eos.
        tool_group: (open, close) around a run of consecutive tool results (Qwen2.5: one user turn).
        answer_lead: text between the header and the content that is part of the answer (trained).
        default_system: system prompt used when neither the conversation nor the encoder gives one.
        bos: text put first, e.g. the BOS token written out.
    """

    user: tuple[str, str]
    assistant: tuple[str, str]
    tool: tuple[str, str]
    system: tuple[str, str] | None
    eot: str | None
    tool_group: tuple[str, str] = ("", "")
    answer_lead: str = ""
    default_system: str | None = None
    bos: str = ""

    def render(
        self, messages: list[Message], tools=None, eos: str = "", add_generation_prompt: bool = False
    ) -> list[Segment]:
        """(text, is_answer) pieces of the conversation; `messages` already hold the system prompt to use."""
        messages = _with_tools(messages, tools)
        eot = eos if self.eot is None else self.eot
        pieces: list[Segment] = [(self.bos, False)]
        pending = ""  # system prompt waiting for the next user turn (no system role)
        for i, message in enumerate(messages):
            role, content = message["role"], message.get("content") or ""
            if role == "assistant":
                answer = self.answer_lead + content + tool_calls_text(message) + eot
                pieces += [(self.assistant[0], False), (answer, True), (self.assistant[1], False)]
            elif role == "system" and self.system is None:
                pending = content
            elif role == "system":
                pieces.append((self.system[0] + content + self.system[1], False))
            elif role == "user":
                text = f"{pending}\n\n{content}" if pending else content
                pieces.append((self.user[0] + text + self.user[1], False))
                pending = ""
            elif role == "tool":
                first = i == 0 or messages[i - 1]["role"] != "tool"
                last = i + 1 == len(messages) or messages[i + 1]["role"] != "tool"
                text = self.tool[0] + content + self.tool[1]
                pieces.append(
                    (
                        (self.tool_group[0] if first else "") + text + (self.tool_group[1] if last else ""),
                        False,
                    )
                )
            else:
                raise TemplateError(
                    f"message {i} has role {role!r}; expected system, user, assistant or tool"
                )
        if add_generation_prompt:
            pieces.append((self.assistant[0], False))
        return [p for p in pieces if p[0]]


def _with_tools(messages: list[Message], tools) -> list[Message]:
    if not tools:
        return messages
    listing = TOOLS_PROMPT.format(tools="".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools))
    if messages and messages[0]["role"] == "system":
        first = messages[0].get("content") or ""
        return [{"role": "system", "content": f"{first}\n\n{listing}" if first else listing}, *messages[1:]]
    return [{"role": "system", "content": listing}, *messages]


def tool_calls_text(message: Message) -> str:
    """Hermes `<tool_call>` blocks for an assistant's `tool_calls`, after the content (Qwen2.5 layout)."""
    blocks = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        args = json.loads(args) if isinstance(args, str) else args
        body = json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)
        blocks.append(f"<tool_call>\n{body}\n</tool_call>")
    if message.get("content"):
        return "".join("\n" + b for b in blocks)
    return "\n".join(blocks)


# Named templates: each the multi-turn layout of its model family's own chat template (differences noted).
# A tool result uses the family's tool role where it has one, otherwise a user turn wrapping the result
# in <tool_response> tags (the Hermes convention the tool-call blocks follow).
TEMPLATES: dict[str, ChatTemplate] = {
    # ChatML (OpenAI / SmolLM2 / Qwen family layout), tool results as a `tool` role turn.
    "chatml": ChatTemplate(
        system=("<|im_start|>system\n", "<|im_end|>\n"),
        user=("<|im_start|>user\n", "<|im_end|>\n"),
        assistant=("<|im_start|>assistant\n", "\n"),
        eot="<|im_end|>",
        tool=("<|im_start|>tool\n", "<|im_end|>\n"),
    ),
    # Qwen2/Qwen2.5: ChatML with the default system prompt of ms-swift's `qwen` template (Qwen2.5's own
    # Jinja default is "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
    # consecutive tool results share one user turn, each in <tool_response> tags, as in Qwen2.5.
    "qwen": ChatTemplate(
        system=("<|im_start|>system\n", "<|im_end|>\n"),
        user=("<|im_start|>user\n", "<|im_end|>\n"),
        assistant=("<|im_start|>assistant\n", "\n"),
        eot="<|im_end|>",
        tool=("\n<tool_response>\n", "\n</tool_response>"),
        tool_group=("<|im_start|>user", "<|im_end|>\n"),
        default_system="You are a helpful assistant.",
    ),
    # Llama 3 / 3.1 Instruct (no trimming of content, no 3.1 "Cutting Knowledge Date" preamble);
    # tool results in the `ipython` role as Llama 3.1 does.
    "llama3": ChatTemplate(
        bos="<|begin_of_text|>",
        system=("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
        user=("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
        assistant=("<|start_header_id|>assistant<|end_header_id|>\n\n", ""),
        eot="<|eot_id|>",
        tool=("<|start_header_id|>ipython<|end_header_id|>\n\n", "<|eot_id|>"),
    ),
    # Mistral-7B-Instruct v0.1/v0.2 `[INST]` layout; no system role: the system prompt opens the first
    # user message (as Mistral's later templates do). Tool results use v0.3's [TOOL_RESULTS] tags.
    "mistral": ChatTemplate(
        bos="<s>",
        system=None,
        user=("[INST] ", " [/INST]"),
        assistant=("", ""),
        eot="</s>",
        tool=("[TOOL_RESULTS] ", "[/TOOL_RESULTS]"),
    ),
    # Gemma 1/2/3: no system role (Gemma 3 puts it at the start of the first user turn, as here),
    # assistant is `model`; content is not trimmed. No tool role: results go in a user turn.
    "gemma": ChatTemplate(
        bos="<bos>",
        system=None,
        user=("<start_of_turn>user\n", "<end_of_turn>\n"),
        assistant=("<start_of_turn>model\n", "\n"),
        eot="<end_of_turn>",
        tool=("<start_of_turn>user\n<tool_response>\n", "\n</tool_response><end_of_turn>\n"),
    ),
    # Phi-3 / Phi-3.5 (without the trailing <|endoftext|> that Phi-3's Jinja adds after the last turn).
    "phi3": ChatTemplate(
        system=("<|system|>\n", "<|end|>\n"),
        user=("<|user|>\n", "<|end|>\n"),
        assistant=("<|assistant|>\n", "\n"),
        eot="<|end|>",
        tool=("<|user|>\n<tool_response>\n", "\n</tool_response><|end|>\n"),
    ),
    # DeepSeek-V2-Chat / V2.5 and deepseek-llm-chat: `User: ...\n\nAssistant: ...<eos>`, system prompt
    # first followed by a blank line. The generation prompt is "Assistant:" as in DeepSeek's Jinja, so
    # the space after it starts the (trained) answer. DeepSeek-V3/R1 use <｜User｜> tokens and ship Jinja.
    "deepseek": ChatTemplate(
        bos="<｜begin▁of▁sentence｜>",
        system=("", "\n\n"),
        user=("User: ", "\n\n"),
        assistant=("Assistant:", ""),
        answer_lead=" ",
        eot="<｜end▁of▁sentence｜>",
        tool=("User: <tool_response>\n", "\n</tool_response>\n\n"),
    ),
    # Stanford Alpaca (ms-swift `alpaca`), answers closed by the tokenizer's eos; tool results as Input.
    "alpaca": ChatTemplate(
        system=("", "\n\n"),
        user=("### Instruction:\n", "\n\n"),
        assistant=("### Response:\n", "\n\n"),
        eot=None,
        tool=("### Input:\n", "\n\n"),
        default_system=(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        ),
    ),
    # Minimal readable format (ms-swift `default` layout), answers closed by the tokenizer's eos.
    "default": ChatTemplate(
        system=("", "\n\n"),
        user=("### Human:\n", "\n\n"),
        assistant=("### Assistant:\n", "\n\n"),
        eot=None,
        tool=("### Tool:\n", "\n\n"),
    ),
}


def from_name(name: str) -> ChatTemplate:
    """The named template; ValueError listing the names for an unknown one."""
    if name not in TEMPLATES:
        raise ValueError(
            f"unknown chat template {name!r}; choose one of: {', '.join(TEMPLATES)} "
            "(or leave `template` unset for the tokenizer's own)"
        )
    return TEMPLATES[name]


@dataclass
class ChatEncoder:
    """Encodes canonical chat rows with the tokenizer's chat template or a named one.

    Args:
        tokenizer: a fast Hugging Face tokenizer (with a chat template unless `template` is given).
        system: system prompt put first when a conversation has none (None keeps the template's default;
            "" gives an empty system turn).
        loss_on: `assistant` trains every assistant turn, `last_assistant` only the final one,
            `all` every token.
        allow_empty_labels: accept samples with no trained token (default: error, never a silent zero loss).
        template: a name from `TEMPLATES`, or None for the tokenizer's own Jinja chat template.
        drop_empty_think: remove empty `<think></think>` blocks from assistant content before rendering.
        train_think_prefix: train a think block that the template inserts after the assistant header
            (e.g. Qwen3's empty `<think>\\n\\n</think>\\n\\n`); by default it is not trained.
    """

    tokenizer: Any
    system: str | None = None
    loss_on: LossOn = "assistant"
    allow_empty_labels: bool = False
    template: str | None = None
    drop_empty_think: bool = False
    train_think_prefix: bool = False

    def __post_init__(self) -> None:
        self.chat_template = None if self.template is None else from_name(self.template)
        if self.chat_template is None and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.name} is missing; pick a named template: {', '.join(TEMPLATES)}")

    @property
    def name(self) -> str:
        if self.template is not None:
            return f"chat template {self.template!r}"
        return f"tokenizer chat template of {getattr(self.tokenizer, 'name_or_path', '?')}"

    @property
    def stop_strings(self) -> list[str]:
        """End-of-turn text after which generation stops."""
        eot = self.chat_template.eot if self.chat_template is not None else None
        return [eot or self.tokenizer.eos_token]

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids of the stop strings that are single tokens of this tokenizer."""
        ids = [self.tokenizer(s, add_special_tokens=False).input_ids for s in self.stop_strings]
        return [x[0] for x in ids if len(x) == 1]

    def with_system(self, messages: list[Message]) -> list[Message]:
        if messages and messages[0]["role"] == "system":
            return list(messages)
        system = self.system
        if system is None and self.chat_template is not None:
            system = self.chat_template.default_system
        return [{"role": "system", "content": system}, *messages] if system is not None else list(messages)

    def _prepare(self, messages: list[Message]) -> list[Message]:
        messages = self.with_system(messages)
        if not self.drop_empty_think:
            return messages
        return [
            {**m, "content": EMPTY_THINK.sub("", m["content"])}
            if m["role"] == "assistant" and m.get("content")
            else m
            for m in messages
        ]

    def render_text(self, messages: list[Message], tools=None, add_generation_prompt: bool = False) -> str:
        """The conversation as the model sees it (system prompt and think handling applied)."""
        return self._render(self._prepare(messages), tools, add_generation_prompt)

    def _render(self, messages: list[Message], tools=None, add_generation_prompt: bool = False) -> str:
        if self.chat_template is not None:
            eos = self.tokenizer.eos_token or ""
            return "".join(
                t for t, _ in self.chat_template.render(messages, tools, eos, add_generation_prompt)
            )
        if not messages and not add_generation_prompt:
            return ""
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def segments(self, messages: list[Message], tools=None, where: str | None = None) -> list[Segment]:
        """Split the rendered conversation into (text, trained) pieces.

        Raises:
            TemplateError: the template drops part of the conversation (see `check_rendered`).
        """
        messages = self._prepare(messages)
        if self.chat_template is not None:
            pieces = self.chat_template.render(messages, tools, self.tokenizer.eos_token or "")
        else:
            pieces = self._native_pieces(messages, tools)
        check_rendered("".join(text for text, _ in pieces), messages, tools, f"{where or 'row'}: {self.name}")
        answers = [i for i, (_, answer) in enumerate(pieces) if answer]
        last = answers[-1] if answers else -1
        if self.loss_on == "all":
            pieces = [(text, True) for text, _ in pieces]
        elif self.loss_on == "last_assistant":
            pieces = [(text, i == last) for i, (text, _) in enumerate(pieces)]
        merged: list[Segment] = []
        for text, trained in pieces:  # join neighbours with the same flag
            merged.append(
                (merged.pop()[0] + text, trained) if merged and merged[-1][1] == trained else (text, trained)
            )
        return merged

    def _native_pieces(self, messages: list[Message], tools) -> list[Segment]:
        """Locate each answer by rendering successive prefixes, which must extend one another."""
        eot = self.tokenizer.eos_token
        pieces: list[Segment] = []
        done = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self._render(messages[:k], tools, add_generation_prompt=True)
            full = self._render(messages[: k + 1], tools)
            if not (head.startswith(done) and full.startswith(head)):
                raise TemplateError(
                    f"{self.name}: rendering the first {k} messages is not a prefix of rendering "
                    f"{k + 1}, so the assistant span cannot be located; pick a named template with `template:`"
                )
            turn = full[len(head) :]
            cut = turn.rfind(eot) + len(eot) if eot and eot in turn else len(turn)
            lead = 0 if self.train_think_prefix else _inserted_think(turn, message)
            pieces += [(head[len(done) :] + turn[:lead], False), (turn[lead:cut], True), (turn[cut:], False)]
            done = full
        rest = self._render(messages, tools)
        pieces.append((rest[len(done) :], False))
        return [(text, trained) for text, trained in pieces if text]

    def encode(self, row: ChatRow, where: str | None = None) -> EncodedSample:
        """Token ids and labels; ValueError (naming `where`) when no token is trained, unless allowed."""
        sample = tokenize_segments(self.tokenizer, self.segments(row.messages, row.tools, where))
        where = where or self.name
        if not self.allow_empty_labels and not any(m["role"] == "assistant" for m in row.messages):
            where += (
                f" (the conversation has no assistant message, roles: {[m['role'] for m in row.messages]})"
            )
        return sample if self.allow_empty_labels else check_labels(sample, where)

    def encode_completion(self, prompt: list[Message], completion: Message, tools=None) -> EncodedSample:
        """Prompt + one assistant answer, labels only on the answer (preference, KTO)."""
        return replace(self, loss_on="last_assistant").encode(ChatRow([*prompt, completion], tools))

    def prompt_ids(self, messages: list[Message], tools=None, where: str | None = None) -> list[int]:
        """Token ids of the conversation followed by the assistant header (for generation).

        With `where` (a training prompt's `file:line`) the render is checked as training rows are
        (`check_rendered`); inference leaves it to the template (Qwen3's drops earlier reasoning on purpose).
        """
        text = self.render_text(messages, tools, add_generation_prompt=True)
        if where is not None:
            check_rendered(text, self._prepare(messages), tools, f"{where}: {self.name}")
        return self.tokenizer(text, add_special_tokens=False).input_ids


def check_rendered(text: str, messages: list[Message], tools, who: str) -> None:
    """Raise TemplateError unless every message's content, tool call and tool schema is in `text`.

    Contents and calls are looked for in conversation order (stripped, as templates may trim them); a call
    by its function name and argument names after its message's content; a tool by its description (its
    name where it has none), which a conversation rarely repeats. A template that ignores `tools` or
    `tool_calls` (SmolLM2's own), strips `<think>` from earlier turns, or drops a system prompt would
    otherwise train on a conversation other than the data's.
    """
    missing, pos = [], 0
    for i, message in enumerate(messages):
        content = (message.get("content") or "").strip()
        found = text.find(content, pos) if content else pos
        if found < 0:
            missing.append(f"the {message['role']} content of message {i}")
        else:
            pos = found + len(content)
        for call in message.get("tool_calls") or []:
            fn = call.get("function", call)
            args = fn.get("arguments", {})
            keys = list(json.loads(args) if isinstance(args, str) else args)
            at = text.find(fn["name"], pos)
            if at < 0 or any(text.find(f'"{key}"', at) < 0 and text.find(key, at) < 0 for key in keys):
                missing.append(f"the tool call {fn['name']!r} of message {i}")
            else:
                pos = at + len(fn["name"])
    for tool in tools or []:
        fn = tool.get("function", tool)
        mark = (fn.get("description") or fn.get("name") or "").strip()
        if mark and mark not in text:
            missing.append(f"tool {fn.get('name')!r} of the tools list")
    if missing:
        raise TemplateError(
            f"{who} does not render {', '.join(missing)}, so training would silently drop it "
            f"(set `template: chatml`, which renders tools and tool calls, or another of: {', '.join(TEMPLATES)})"
        )


def _inserted_think(turn: str, message: Message) -> int:
    """Length of a think block the template put before the answer that the message itself lacks."""
    block = THINK_BLOCK.match(turn)
    own = (message.get("content") or "").lstrip().startswith("<think>") or message.get("reasoning_content")
    return block.end() if block and not own else 0


def tokenize_segments(tokenizer, segments: list[Segment]) -> EncodedSample:
    """Tokenize the joined text once (so ids equal the template's own) and label tokens by char span.

    A token is trained when any of its characters is: a token such as " Hello" that starts with the
    header's last space still belongs to the answer.
    """
    text = "".join(t for t, _ in segments)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trained_spans, pos = [], 0
    for piece, trained in segments:
        if trained:
            trained_spans.append((pos, pos + len(piece)))
        pos += len(piece)
    labels, span = [], 0
    for token, (start, end) in zip(enc.input_ids, enc.offset_mapping, strict=True):
        while span < len(trained_spans) and trained_spans[span][1] <= start:
            span += 1
        inside = span < len(trained_spans) and trained_spans[span][0] < max(end, start + 1)
        labels.append(token if inside else IGNORE_INDEX)
    return EncodedSample(list(enc.input_ids), labels)


def check_labels(sample: EncodedSample, where: str) -> EncodedSample:
    """Return `sample`, or raise ValueError naming `where` (e.g. `file:line`) when no token is trained.

    Call it after `truncate` too: cutting a long prompt to `max_length` is the usual way to lose every
    trained token.
    """
    if sample.num_label_tokens == 0:
        raise ValueError(
            f"{where}: no token carries a label ({len(sample)} tokens); an empty or missing assistant answer, "
            "or truncation cut every trained token: raise max_length, use truncation left/drop, fix the row, "
            "or set allow_empty_labels"
        )
    return sample


def truncate(sample: EncodedSample, max_length: int, mode: Truncation) -> list[EncodedSample]:
    """Fit a sample into `max_length`: keep the start (`right`), the end (`left`), drop it, or split it."""
    if len(sample) <= max_length:
        return [sample]
    if mode == "drop":
        return []
    if mode == "right":
        return [EncodedSample(sample.input_ids[:max_length], sample.labels[:max_length])]
    if mode == "left":
        return [EncodedSample(sample.input_ids[-max_length:], sample.labels[-max_length:])]
    return [
        EncodedSample(sample.input_ids[i : i + max_length], sample.labels[i : i + max_length])
        for i in range(0, len(sample), max_length)
    ]
