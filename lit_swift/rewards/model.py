"""A trained reward model as a reward function: the HF folder `objectives/reward.py` exports scores each
prompt + completion at its last token."""

from __future__ import annotations

from typing import Any

import torch

from lit_swift.rewards.base import Reward


class RewardModelScorer(Reward):
    """Scalar score of `prompt + completion + suffix` from an `AutoModelForSequenceClassification` folder.

    Args:
        path: the exported folder (e.g. `RUN/checkpoints/last.hf` of a reward-model run).
        suffix: text closing the completion as in training (default: the tokenizer's eos token, which is
            the end of turn of ChatML models such as SmolLM2).
        device: where the reward model runs.
        dtype: its weight dtype.
    """

    def __init__(self, path: str, suffix: str | None = None, device: str = "cpu", dtype: str = "float32"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.suffix = self.tokenizer.eos_token if suffix is None else suffix

    @torch.no_grad()
    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        out = []
        # one text per forward: no padding, so the score is read at the true last token
        for prompt, completion in zip(kwargs["prompts"], completions, strict=True):
            ids = self.tokenizer(
                prompt + completion + self.suffix, add_special_tokens=False, return_tensors="pt"
            )
            logits = self.model(input_ids=ids.input_ids.to(self.device)).logits  # [1, 1]
            out.append(float(logits[0, 0]))
        return out
