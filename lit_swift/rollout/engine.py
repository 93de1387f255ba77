"""The rollout engine protocol: prompts as token ids in, completions with per-token log-probs out.

Every engine (the in-process HF engine, SGLang colocated, a remote `lit-swift rollout` or SGLang
server) implements `RolloutEngine`, so the GRPO objective never knows which one it talks to.
Sampling is seeded per completion by the caller (`Request.seed`), so completions do not depend on
how prompts are split over ranks, micro-batches or engine batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; the same for every request of one `generate` call.

    Args:
        max_new_tokens: completion length cap in tokens (`finish_reason == "length"` when reached).
        temperature: softmax temperature; 0 means greedy.
        top_p: nucleus sampling mass (1.0 = off).
        top_k: keep the k most likely tokens (0 = off).
        repetition_penalty: CTRL-style penalty on tokens already in prompt or completion (1.0 = off).
        stop_token_ids: token ids that end a completion (included in `token_ids`, finish "stop").
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Request:
    """One completion to generate: the prompt's token ids and the seed of its sampling stream."""

    prompt_ids: list[int]
    seed: int


@dataclass
class Completion:
    """One generated completion.

    `logprobs[i]` is log π(token_ids[i] | prompt, token_ids[:i]) with π = softmax(logits /
    temperature) over the full vocabulary (temperature 1 when greedy), without top-k/top-p
    truncation or repetition penalty: the same quantity the trainer recomputes (as TRL does).
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    extra: dict = field(default_factory=dict)


class RolloutEngine(ABC):
    """Generates completions for the policy being trained and follows its weights.

    `asynchronous` engines generate in the background (`submit` returns at once); GRPO then trains
    one rollout behind generation (one step off-policy, see `lit_swift.objectives.grpo`).
    """

    asynchronous: bool = False

    @abstractmethod
    def generate(self, requests: list[Request], sampling: SamplingParams) -> list[Completion]:
        """One `Completion` per request, in order."""

    def submit(self, requests: list[Request], sampling: SamplingParams) -> Future[list[Completion]]:
        """`generate` as a future; here it runs at once, an asynchronous engine returns before it ends."""
        future: Future[list[Completion]] = Future()
        try:
            future.set_result(self.generate(requests, sampling))
        except Exception as error:  # noqa: BLE001 - handed to whoever reads the future
            future.set_exception(error)
        return future

    @abstractmethod
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine generate with `model`'s current weights (no-op for an in-process engine)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release processes, servers or GPU memory the engine holds."""


def completion_seed(seed: int, step: int, prompt_index: int, generation_index: int) -> int:
    """A 63-bit seed for one completion from (run seed, rollout step, global prompt index, generation)."""
    import hashlib

    key = f"{seed}:{step}:{prompt_index}:{generation_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1
