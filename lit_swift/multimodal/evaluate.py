"""Held-out exact match of a vision-language model's greedy answers (e.g. on `scripts/make_image_data.py` rows).

`ExactMatch` logs `val/exact_match` before training and after every validation, so a run's metrics show
whether the model learns to see: chance on the synthetic questions is 1/6 to 1/3 per task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lit_swift import tuners
from lit_swift.data import sources
from lit_swift.data.multimodal import ImageSample, MultimodalEncoder, image_inputs, load_processor
from lit_swift.types import ChatRow, Message


def read_rows(dataset: str) -> list[tuple[ChatRow, Any]]:
    """Chat rows of `dataset` (`path#N` takes N rows) with their provenance; bad rows raise."""
    rows, _ = sources.load_mixture([sources.DatasetSpec(dataset)], "chat")
    return rows


@torch.no_grad()
def generate(
    model: torch.nn.Module, encoder: MultimodalEncoder, prompts: list[ImageSample], **kwargs
) -> list[str]:
    """Answer texts for prompts (from `MultimodalEncoder.prompt`), left-padded into one batch with their
    images; `kwargs` go to `generate` (e.g. `max_new_tokens`, `do_sample`)."""
    tokenizer, processor = encoder.encoder.tokenizer, encoder.processor
    stop = sorted({*encoder.encoder.stop_token_ids, tokenizer.eos_token_id} - {None})
    device, pad = next(model.parameters()).device, tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p.input_ids for p in prompts])  # [B, T]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # [B, T]
    refs = [ref for p in prompts for ref in p.images]
    images = {k: v.to(device) for k, v in image_inputs(processor, refs).items()} if refs else {}
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        eos_token_id=stop,
        pad_token_id=pad,
        **images,
        **kwargs,
    )  # [B, T + new]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, width:].tolist()]


def generate_answers(
    model: torch.nn.Module,
    encoder: MultimodalEncoder,
    rows: list[tuple[ChatRow, Any]],
    batch_size: int = 16,
    max_new_tokens: int = 8,
) -> list[str]:
    """Greedy answers to each row's conversation (its final assistant turn left out), images included."""
    answers = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        prompts = [encoder.prompt(row, str(where), Path(where.source).parent) for row, where in chunk]
        answers += generate(model, encoder, prompts, max_new_tokens=max_new_tokens, do_sample=False)
    return answers


def answer_with_images(
    generator: Any, conversation: list[Message], images: list[str], generate_kwargs
) -> str:
    """`lit-swift infer --images`: one answer from a loaded `Generator` whose model folder has a processor.

    Paths are taken from the working directory; `<image>` tags place them, else they go first.
    """
    folder = tuners.base_model(generator.model).name_or_path
    encoder = MultimodalEncoder(generator.encoder, load_processor(folder))
    prompt = encoder.prompt(ChatRow(conversation, images=list(images)), "--images")
    return generate(generator.model, encoder, [prompt], **generate_kwargs)[0]


def exact_match(answers: list[str], rows: list[tuple[ChatRow, Any]]) -> float:
    """Fraction of answers equal to the reference answer (case and surrounding space ignored)."""
    refs = [row.messages[-1]["content"].strip().lower() for row, _ in rows]
    return sum(a.strip().lower() == r for a, r in zip(answers, refs, strict=True)) / max(1, len(rows))


class ExactMatch(Callback):
    """Logs held-out exact match (`val/exact_match`) before training and after every validation run.

    Needs a `MultimodalDataModule` (its encoder renders the prompts and expands the images).

    Args:
        dataset: held-out rows (`path#N` takes the first N).
        batch_size: rows generated together.
        max_new_tokens: answer length cap.
    """

    def __init__(self, dataset: str, batch_size: int = 16, max_new_tokens: int = 8):
        self.dataset, self.batch_size, self.max_new_tokens = dataset, batch_size, max_new_tokens
        self.history: list[tuple[int, float]] = []

    def measure(self, trainer, pl_module) -> float:
        rows = read_rows(self.dataset)
        model, was_training = pl_module.model, pl_module.model.training
        model.eval()
        answers = generate_answers(
            model, trainer.datamodule.encoder, rows, self.batch_size, self.max_new_tokens
        )
        model.train(was_training)
        score = exact_match(answers, rows)
        self.history.append((trainer.global_step, score))
        rank_zero_info(f"step {trainer.global_step}: held-out exact match {score:.3f} on {len(rows)} rows")
        if trainer.logger is not None:
            trainer.logger.log_metrics({"val/exact_match": score}, step=trainer.global_step)
        return score

    def on_fit_start(self, trainer, pl_module) -> None:
        self.measure(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.measure(trainer, pl_module)
