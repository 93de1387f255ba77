"""Raw dict rows -> canonical rows (`lit_swift.types`): detect the row format, validate, normalise.

Formats follow ms-swift's custom-dataset docs (plus TRL's prompt/chosen/rejected); every rejection is a
`RowError` whose reason names the column and turn at fault.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from lit_swift.types import (
    CanonicalRow,
    ChatRow,
    EmbeddingRow,
    KTORow,
    Message,
    PreferenceRow,
    PromptRow,
    TextRow,
)

RowKind = Literal["chat", "text", "preference", "kto", "prompt", "embedding"]
"""The canonical row an objective expects (SFT: chat, CPT: text, DPO/reward: preference, ...)."""

# Accepted role -> canonical role. ms-swift's agent roles: a `tool_call` turn holds the JSON call and
# merges into the assistant's `tool_calls`; `tool_response` (ShareGPT `observation`) is the tool turn.
_ROLES = {r: r for r in ("system", "user", "assistant", "tool", "tool_call")} | {"tool_response": "tool"}
_SHAREGPT = _ROLES | {
    "human": "user",
    "gpt": "assistant",
    "function_call": "tool_call",
    "observation": "tool",
}
# Columns each chat format consumes; prompt rows keep every other column in `extra`.
_FORMAT_KEYS = {
    "messages": {"messages", "system", "tools"},
    "sharegpt": {"conversations", "system", "tools"},
    "sharegpt_pairs": {"conversation", "system", "tools"},
    "alpaca": {"instruction", "input", "output", "system", "history", "tools"},
    "query": {"query", "response", "system", "history", "tools"},
    "prompt": {"prompt", "completion", "system", "tools"},
}
_EXPECTED = {
    "chat": "messages | conversations | conversation | instruction+output | query+response | prompt+completion",
    "text": "text | content",
    "preference": "<chat columns>+rejected_response | messages+rejected_messages | <prompt columns>+chosen+rejected"
    " | chosen+rejected",
    "kto": "<chat columns>+label | prompt+completion+label",
    "prompt": "messages | conversations | conversation | instruction | query | prompt",
    "embedding": "query|anchor + positive|response [+ negatives|negative] [+ score|label]",
}


class RowError(ValueError):
    """A raw row that cannot become the requested canonical row.

    Args:
        reason: What is wrong, naming the column (and turn) at fault.
        code: Short category used to count skipped rows (e.g. ``no_format``, ``empty_answer``).
    """

    def __init__(self, reason: str, code: str = "bad_type") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def to_canonical(raw: dict[str, Any], kind: RowKind, columns: dict[str, str] | None = None) -> CanonicalRow:
    """Normalise one raw row into the canonical row for `kind`.

    Args:
        raw: One row as read from a file (column name -> value). `None` values count as absent.
        kind: Which canonical row to build (chat, text, preference, kto, prompt, embedding).
        columns: Renames applied first, raw name -> expected name (e.g. ``{"question": "query"}``).

    Returns:
        A `ChatRow`, `TextRow`, `PreferenceRow`, `KTORow`, `PromptRow` or `EmbeddingRow`.

    Raises:
        RowError: The row does not fit `kind`; the reason says why.
        ValueError: `kind` is not a known row kind (a configuration error, not a row error).
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown row kind {kind!r}; expected one of {sorted(_BUILDERS)}")
    if not isinstance(raw, dict):
        raise RowError(f"row is a {_tname(raw)}, expected an object with named columns", "bad_type")
    return _BUILDERS[kind](_rename(raw, columns))


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _has(raw: dict[str, Any], key: str) -> bool:
    return raw.get(key) is not None


def _rename(raw: dict[str, Any], columns: dict[str, str] | None) -> dict[str, Any]:
    if not columns:
        return raw
    out = {k: v for k, v in raw.items() if k not in columns}
    for src, dst in columns.items():
        if src not in raw:
            continue
        if dst in out:
            raise RowError(f"column rename {src!r} -> {dst!r} clashes with an existing column", "rename")
        out[dst] = raw[src]
    return out


def _no_format(raw: dict[str, Any], kind: str) -> RowError:
    return RowError(
        f"row has none of the columns of a known {kind} format: keys {sorted(raw)}; "
        f"expected one of: {_EXPECTED[kind]}",
        "no_format",
    )


def _json(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise RowError(f"{where} is not valid JSON: {e}", "bad_json") from e


def _tools(value: Any) -> list[dict[str, Any]] | None:
    """`tools` as a list of dicts; ms-swift also allows a JSON string, or a list of JSON strings."""
    value = _json(value, "'tools'")
    if value in (None, "", []):
        return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"'tools' must be a list of tool schemas, got {_tname(value)}", "bad_type")
    tools = [_json(t, f"tools[{i}]") for i, t in enumerate(value)]
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise RowError(f"tools[{i}] must be an object, got {_tname(tool)}", "bad_type")
    return tools


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    """One call in OpenAI form with `arguments` parsed to a dict (what HF chat templates expect)."""
    call = _json(call, where)
    if not isinstance(call, dict):
        raise RowError(f"{where} must be an object, got {_tname(call)}", "bad_type")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RowError(f"{where} has no function name", "bad_type")
    args = _json(fn.get("arguments", {}), f"{where} arguments")
    if not isinstance(args, dict):
        raise RowError(f"{where} arguments must be an object, got {_tname(args)}", "bad_type")
    out: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    value = _json(value, where)
    calls = value if isinstance(value, list) else [value]
    return [_tool_call(c, f"{where}[{i}]") for i, c in enumerate(calls)]


def _messages(turns: Any, field: str, roles: dict[str, str] = _ROLES) -> list[Message]:
    """Normalise a list of turns; ms-swift `tool_call` turns merge into the assistant's `tool_calls`."""
    if not isinstance(turns, list) or not turns:
        raise RowError(f"{field!r} must be a non-empty list of turns, got {_tname(turns)}", "bad_type")
    out: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(f"{where} must be an object, got {_tname(turn)}", "bad_type")
        role = turn.get("role", turn.get("from"))
        if role is None:
            raise RowError(f"{where} has no role ('role' or 'from')", "bad_role")
        if role not in roles:
            raise RowError(f"{where} has unknown role {role!r}; expected one of {sorted(roles)}", "bad_role")
        role, content = roles[role], turn.get("content", turn.get("value"))
        if role == "tool_call":
            calls = _tool_calls(content, where)
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).extend(calls)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise RowError(f"{where} content must be a string, got {_tname(content)}", "bad_type")
        msg: Message = {"role": role, "content": content}
        if turn.get("tool_calls"):
            if role != "assistant":
                raise RowError(f"{where} has tool_calls but role {role!r}; only assistant turns call tools")
            msg["tool_calls"] = _tool_calls(turn["tool_calls"], f"{where}.tool_calls")
        if isinstance(turn.get("name"), str):
            msg["name"] = turn["name"]
        out.append(msg)
    return out


def _pairs(turns: Any) -> list[Message]:
    """ms-swift's ShareGPT form: `[{"human": query, "assistant": response}, ...]`; the last may lack a response."""
    if not isinstance(turns, list) or not turns:
        raise RowError(f"'conversation' must be a non-empty list of turns, got {_tname(turns)}", "bad_type")
    out: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("human"), str):
            raise RowError(f"conversation[{i}] must be an object with a 'human' string", "bad_type")
        out += _text_turn(turn, "human", "user") + _text_turn(turn, "assistant", "assistant")
    return out


def _history(raw: dict[str, Any]) -> list[Message]:
    history = raw.get("history") or []
    if not isinstance(history, list):
        raise RowError(f"'history' must be a list of [query, response] pairs, got {_tname(history)}")
    out: list[Message] = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise RowError(f"history[{i}] must be a [query, response] pair of strings", "bad_type")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def _text_turn(raw: dict[str, Any], key: str, role: str) -> list[Message]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, str):
        raise RowError(f"{key!r} must be a string, got {_tname(value)}", "bad_type")
    return [{"role": role, "content": value}]


def _conversation(raw: dict[str, Any], kind: str) -> tuple[list[Message], list[dict] | None, str]:
    """All turns of a chat-format row (the answer included when present), its tools and format."""
    if _has(raw, "messages"):
        msgs, fmt = _messages(raw["messages"], "messages"), "messages"
    elif _has(raw, "conversations"):
        msgs, fmt = _messages(raw["conversations"], "conversations", _SHAREGPT), "sharegpt"
    elif _has(raw, "conversation"):
        msgs, fmt = _pairs(raw["conversation"]), "sharegpt_pairs"
    elif _has(raw, "instruction"):
        parts = [_text_turn(raw, k, "user") for k in ("instruction", "input")]
        query = "\n".join(p[0]["content"] for p in parts if p and p[0]["content"])
        msgs = _history(raw) + [{"role": "user", "content": query}] + _text_turn(raw, "output", "assistant")
        fmt = "alpaca"
    elif _has(raw, "query"):
        msgs = _history(raw) + _text_turn(raw, "query", "user") + _text_turn(raw, "response", "assistant")
        fmt = "query"
    elif _has(raw, "prompt"):
        prompt = raw["prompt"]
        msgs = _text_turn(raw, "prompt", "user") if isinstance(prompt, str) else _messages(prompt, "prompt")
        if _has(raw, "completion"):
            answer, prefix = _answer(raw["completion"], "completion")
            msgs = msgs + prefix + [answer]
        fmt = "prompt"
    else:
        raise _no_format(raw, kind)
    return _with_system(raw, msgs), _tools(raw.get("tools")), fmt


def _with_system(raw: dict[str, Any], msgs: list[Message]) -> list[Message]:
    system = raw.get("system")
    if system in (None, ""):
        return msgs
    if not isinstance(system, str):
        raise RowError(f"'system' must be a string, got {_tname(system)}", "bad_type")
    if msgs and msgs[0]["role"] == "system":
        raise RowError("system prompt given twice: a 'system' column and a system turn", "bad_order")
    return [{"role": "system", "content": system}, *msgs]


def _answer(value: Any, field: str) -> tuple[Message, list[Message]]:
    """An answer given as a string, an assistant message, or a conversation ending with it (TRL)."""
    if isinstance(value, str):
        msg, prefix = {"role": "assistant", "content": value}, []
    elif isinstance(value, dict):
        turn = value if "role" in value or "from" in value else {"role": "assistant", **value}
        msg, prefix = _messages([turn], field)[0], []
    elif isinstance(value, list):
        msgs = _messages(value, field)
        msg, prefix = msgs[-1], msgs[:-1]
    else:
        raise RowError(f"{field!r} must be a string, a message or a list of messages, got {_tname(value)}")
    if msg["role"] != "assistant":
        raise RowError(f"{field!r} must end with an assistant turn, got role {msg['role']!r}", "bad_role")
    return msg, prefix


def _check(msgs: list[Message]) -> None:
    """Checks every template can render the conversation; consecutive user turns are allowed."""
    for i, m in enumerate(msgs):
        if m["role"] == "system" and i > 0:
            raise RowError(f"system turn at position {i}; only the first turn may be system", "bad_order")
        if m["role"] == "tool" and (i == 0 or msgs[i - 1]["role"] not in ("assistant", "tool")):
            raise RowError(f"tool turn at position {i} must follow an assistant or tool turn", "bad_order")
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise RowError(
                f"assistant turn at position {i} is empty (no content, no tool_calls)", "empty_answer"
            )
    if not any(m["role"] == "user" for m in msgs):
        raise RowError("conversation has no user turn", "bad_order")


def _check_prompt(prompt: list[Message], answer: Message | None) -> None:
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        last = f"its last turn is {prompt[-1]['role']!r}" if prompt else "it is empty"
        raise RowError(f"the prompt must end with a user or tool turn, but {last}", "bad_order")
    _check(prompt + ([answer] if answer else []))


def _chat(raw: dict[str, Any]) -> ChatRow:
    msgs, tools, _ = _conversation(raw, "chat")
    if msgs[-1]["role"] != "assistant":
        raise RowError(f"chat row must end with an assistant turn, not {msgs[-1]['role']!r}", "no_answer")
    _check(msgs)
    return ChatRow(messages=msgs, tools=tools, images=_images(raw.get("images")))


def _images(value: Any) -> list[str] | None:
    """ms-swift's `images` column: a path or base64 string, a list of them, or `{"path": ...}` objects."""
    if value in (None, []):
        return None
    items = value if isinstance(value, list) else [value]
    refs = [item.get("path") if isinstance(item, dict) else item for item in items]
    for i, ref in enumerate(refs):
        if not isinstance(ref, str) or not ref:
            raise RowError(
                f"images[{i}] must be a path or base64 string, got {_tname(items[i])}", "bad_image"
            )
    return refs


def _text(raw: dict[str, Any]) -> TextRow:
    key = "text" if _has(raw, "text") else "content" if _has(raw, "content") else None
    if key is None:
        raise _no_format(raw, "text")
    if not isinstance(raw[key], str):
        raise RowError(f"{key!r} must be a string, got {_tname(raw[key])}", "bad_type")
    if not raw[key].strip():
        raise RowError(f"{key!r} is empty", "empty_answer")
    return TextRow(text=raw[key])


def _preference(raw: dict[str, Any]) -> PreferenceRow:
    if _has(raw, "rejected_messages"):  # the whole rejected conversation, the same up to its last turn
        msgs, tools, _ = _conversation(raw, "preference")
        other = _with_system(raw, _messages(raw["rejected_messages"], "rejected_messages"))
        if msgs[-1]["role"] != "assistant" or other[-1]["role"] != "assistant":
            raise RowError(
                "'messages' and 'rejected_messages' must both end with an assistant turn", "no_answer"
            )
        if msgs[:-1] != other[:-1]:
            raise RowError("'messages' and 'rejected_messages' differ before their last turn", "bad_order")
        prompt, chosen, rejected = msgs[:-1], msgs[-1], other[-1]
    elif _has(raw, "rejected_response"):
        msgs, tools, _ = _conversation(raw, "preference")
        if msgs[-1]["role"] != "assistant":
            raise RowError("'rejected_response' needs the chosen answer as the final turn", "no_answer")
        prompt, chosen = msgs[:-1], msgs[-1]
        rejected, _ = _answer(raw["rejected_response"], "rejected_response")
    elif _has(raw, "chosen") and _has(raw, "rejected"):
        prompt, tools = [], _tools(raw.get("tools"))
        if any(_has(raw, k) for k in ("messages", "conversations", "instruction", "query", "prompt")):
            prompt, tools, _ = _conversation(raw, "preference")
        chosen, c_prefix = _answer(raw["chosen"], "chosen")
        rejected, r_prefix = _answer(raw["rejected"], "rejected")
        if c_prefix != r_prefix:
            raise RowError("'chosen' and 'rejected' conversations differ before the answer", "bad_order")
        if c_prefix and prompt and c_prefix != prompt:
            raise RowError("'chosen'/'rejected' conversations do not start with the prompt", "bad_order")
        prompt = prompt or _with_system(raw, c_prefix)
    else:
        raise _no_format(raw, "preference")
    _check_prompt(prompt, chosen)
    _check_prompt(prompt, rejected)
    if chosen["content"] == rejected["content"] and chosen.get("tool_calls") == rejected.get("tool_calls"):
        raise RowError("chosen and rejected answers are identical", "identical")
    return PreferenceRow(messages=prompt, chosen=chosen, rejected=rejected, tools=tools)


def _label(value: Any) -> bool:
    """KTO labels: JSON booleans, or the integers 0/1 (parquet/pandas exports); strings are refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    got = f"{_tname(value)} {value!r}"
    raise RowError(f"'label' must be a boolean (true/false or 0/1), got {got}", "bad_label")


def _kto(raw: dict[str, Any]) -> KTORow:
    if not _has(raw, "label"):
        raise _no_format(raw, "kto")
    label = _label(raw["label"])
    msgs, tools, _ = _conversation(raw, "kto")
    if msgs[-1]["role"] != "assistant":
        raise RowError("KTO row must end with the completion as an assistant turn", "no_answer")
    _check_prompt(msgs[:-1], msgs[-1])
    return KTORow(messages=msgs[:-1], completion=msgs[-1], label=label, tools=tools)


def _prompt(raw: dict[str, Any]) -> PromptRow:
    """Prompt rows end with a user (or tool) turn; a final assistant turn moves to `extra['response']`."""
    msgs, tools, fmt = _conversation(raw, "prompt")
    extra = {k: v for k, v in raw.items() if k not in _FORMAT_KEYS[fmt]}
    if msgs[-1]["role"] == "assistant":
        extra.setdefault("response", msgs.pop()["content"])
    _check_prompt(msgs, None)
    return PromptRow(messages=msgs, extra=extra, tools=tools)


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{field!r} must be a string, got {_tname(value)}", "bad_type")
    if not value.strip():
        raise RowError(f"{field!r} is empty", "empty_answer")
    return value


def _last_text(turns: Any, field: str) -> str:
    return _string(_messages(turns, field)[-1]["content"], field)


def _embedding(raw: dict[str, Any]) -> EmbeddingRow:
    if _has(raw, "messages") and _has(raw, "positive_messages"):  # ms-swift's embedding form
        query = _last_text(raw["messages"], "messages")
        pos = raw["positive_messages"]
        if not isinstance(pos, list) or len(pos) != 1:
            raise RowError("'positive_messages' must hold exactly one conversation", "bad_type")
        positive = _last_text(pos[0], "positive_messages")
        negs = raw.get("negative_messages") or []
        negatives = [_last_text(n, f"negative_messages[{i}]") for i, n in enumerate(negs)]
    else:
        q_key = next((k for k in ("query", "anchor") if _has(raw, k)), None)
        p_key = next((k for k in ("positive", "response") if _has(raw, k)), None)
        if q_key is None or p_key is None:
            raise _no_format(raw, "embedding")
        query, positive = _string(raw[q_key], q_key), _string(raw[p_key], p_key)
        negs = raw.get("negatives") if _has(raw, "negatives") else raw.get("negative") or []
        negs = [negs] if isinstance(negs, str) else negs
        if not isinstance(negs, list):
            raise RowError(f"'negatives' must be a list of strings, got {_tname(negs)}", "bad_type")
        negatives = [_string(n, f"negatives[{i}]") for i, n in enumerate(negs)]
    score = raw.get("score") if _has(raw, "score") else raw.get("label")
    if score is not None and not isinstance(score, (int, float)):
        raise RowError(f"'score'/'label' must be a number, got {_tname(score)} {score!r}", "bad_type")
    return EmbeddingRow(query, positive, negatives, None if score is None else float(score))


_BUILDERS = {
    "chat": _chat,
    "text": _text,
    "preference": _preference,
    "kto": _kto,
    "prompt": _prompt,
    "embedding": _embedding,
}
