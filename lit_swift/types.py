"""Typed hand-offs between the data stages: canonical rows and encoded samples.

Every row format a user may feed (OpenAI messages, ShareGPT, Alpaca, preference, KTO, prompts,
embedding) is normalised by `lit_swift.data.rows` into one of the canonical rows below; templates
turn canonical rows into `EncodedSample`s; collators turn samples into `Batch` dicts of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

Role = Literal["system", "user", "assistant", "tool"]
IGNORE_INDEX = -100
"""Label value for positions that carry no loss (PyTorch's cross-entropy default)."""


class Message(TypedDict, total=False):
    """One chat turn in OpenAI form. `content` is text; assistant turns may carry `tool_calls`."""

    role: Role
    content: str
    tool_calls: list[dict[str, Any]]
    name: str


@dataclass
class ChatRow:
    """A conversation for SFT: `messages` (ending with an assistant turn), optional `tools`.

    `images` (multimodal rows): paths or base64 strings, one per `<image>` tag in the user turns, or put
    before the first user turn when there is no tag (see `lit_swift.data.multimodal`).
    """

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    images: list[str] | None = None


@dataclass
class TextRow:
    """Plain text for continued pre-training (no template)."""

    text: str


@dataclass
class PreferenceRow:
    """A prompt (`messages` without the final answer) with a preferred and a dispreferred answer."""

    messages: list[Message]
    chosen: Message
    rejected: Message
    tools: list[dict[str, Any]] | None = None


@dataclass
class KTORow:
    """A prompt with one answer marked desirable (`label=True`) or undesirable (`label=False`)."""

    messages: list[Message]
    completion: Message
    label: bool
    tools: list[dict[str, Any]] | None = None


@dataclass
class PromptRow:
    """A prompt for RL rollouts; `extra` keeps the other columns (e.g. `solution`) for rewards."""

    messages: list[Message]
    extra: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None


@dataclass
class EmbeddingRow:
    """A query with one positive text and optional hard negatives (or a similarity `score`)."""

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    score: float | None = None


CanonicalRow = ChatRow | TextRow | PreferenceRow | KTORow | PromptRow | EmbeddingRow


@dataclass
class EncodedSample:
    """Token ids and per-token labels; `labels[i] == IGNORE_INDEX` where no loss is taken.

    Labels are aligned with `input_ids` (not shifted): the model predicts `labels[i]` from
    positions `< i`, and the shift happens once, in the loss.
    """

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_label_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)
