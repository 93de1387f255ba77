"""Print the model's greedy answers to fixed prompts: before training, after it, and at validation."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only


class SampleAnswers(Callback):
    """Shows what training changed by answering the same prompts before and after.

    Args:
        prompts: user messages to answer (each a fresh single-turn conversation).
        max_new_tokens: answer length cap.
        at_validation: also answer at the end of every validation run.
    """

    def __init__(self, prompts: list[str], max_new_tokens: int = 48, at_validation: bool = False):
        self.prompts, self.max_new_tokens, self.at_validation = prompts, max_new_tokens, at_validation
        self.history: list[tuple[str, list[str]]] = []

    @torch.no_grad()
    def answers(self, pl_module) -> list[str]:
        tok, model = pl_module.tokenizer, pl_module.model
        was_training = model.training
        model.eval()
        out = []
        for prompt in self.prompts:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            ).to(pl_module.device)
            generated = model.generate(
                **ids, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
            out.append(
                tok.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            )
        model.train(was_training)
        return out

    @rank_zero_only
    def _show(self, pl_module, when: str) -> None:
        answers = self.answers(pl_module)
        self.history.append((when, answers))
        print(f"\n=== answers {when} ===")
        for prompt, answer in zip(self.prompts, answers, strict=True):
            print(f"Q: {prompt}\nA: {answer}\n")

    def on_fit_start(self, trainer, pl_module) -> None:
        self._show(pl_module, "before training")

    def on_fit_end(self, trainer, pl_module) -> None:
        self._show(pl_module, "after training")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.at_validation and not trainer.sanity_checking:
            self._show(pl_module, f"at step {trainer.global_step}")
