"""Evaluation during training: lm-eval tasks on the live model (`LMEval`) and generation metrics
(`GenerationMetrics`: exact match, ROUGE-L, BLEU from torchmetrics) on held-out chat rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class LMEval(Callback):
    """Scores the model being trained (adapters on) on lm-eval tasks and logs `eval/<task>/<metric>`.

    Runs on rank 0 (other ranks wait and receive the numbers), so `ModelCheckpoint(monitor=...)` and
    `EarlyStopping` can use the metrics like any logged value. Single-device and DDP runs only (a
    sharded FSDP/DeepSpeed model cannot run on one rank). Needs the `eval` extra.

    Args:
        tasks: comma-separated lm-eval task, tag or group names (default: lit-swift's offline arithmetic
            multiple choice, a log-likelihood task that takes seconds).
        every_n_train_steps: also evaluate after every N optimizer steps (0: never during the epoch).
        at_validation: evaluate at the end of every validation run.
        before_training: evaluate once before the first step, as the baseline.
        limit: documents per task (a float < 1: that fraction); None for all.
        batch_size: lm-eval's batch size.
        include_path: extra folders of lm-eval task YAMLs.
        chat_template: as `lit-swift eval --chat_template` (None: where the task asks for it).
    """

    def __init__(
        self,
        tasks: str = "litswift_arith_mc",
        every_n_train_steps: int = 0,
        at_validation: bool = True,
        before_training: bool = False,
        limit: float | None = None,
        batch_size: int = 8,
        include_path: list[str] | None = None,
        chat_template: bool | None = None,
    ):
        self.tasks, self.every_n_train_steps, self.limit = tasks, every_n_train_steps, limit
        self.at_validation, self.before_training = at_validation, before_training
        self.batch_size, self.include_path, self.chat_template = batch_size, include_path, chat_template
        self.history: list[tuple[int, dict[str, float]]] = []
        self._manager = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        from lit_swift.eval import harness

        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
            raise ValueError(
                f"LMEval runs the model on rank 0 alone, which a sharded model ({type(trainer.strategy).__name__}) "
                "cannot do: evaluate the saved checkpoints with `lit-swift eval` instead"
            )
        if trainer.is_global_zero:  # index the tasks and check names and data before any training
            names = harness.split_tasks(self.tasks)
            self._manager = harness.task_manager(self.include_path, names)
            harness.load_tasks(names, self._manager)

    def evaluate(self, trainer, pl_module) -> dict[str, float]:
        """Run the tasks on rank 0 and share the scores with every rank."""
        from lit_swift.eval import harness

        scores = None
        if trainer.is_global_zero:
            model = pl_module.model
            was_training = model.training
            try:
                lm = harness.live_model(model, pl_module.tokenizer, self.batch_size)
                results = harness.run_tasks(lm, self.tasks, self.limit, self._manager, self.chat_template)
            finally:
                model.train(was_training)
            scores = {f"eval/{name}": value for name, value in harness.scores(results).items()}
        scores = trainer.strategy.broadcast(scores, src=0)
        self.history.append((trainer.global_step, scores))
        return scores

    def _log(self, pl_module, scores: dict[str, float], on_step: bool) -> None:
        for name, value in scores.items():
            pl_module.log(name, value, on_step=on_step, on_epoch=not on_step, sync_dist=False)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.before_training:
            scores = self.evaluate(trainer, pl_module)
            for logger in trainer.loggers:
                logger.log_metrics(scores, step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        step_done = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
        if n > 0 and step_done and trainer.global_step % n == 0:
            self._log(pl_module, self.evaluate(trainer, pl_module), on_step=True)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.at_validation and not trainer.sanity_checking:
            self._log(pl_module, self.evaluate(trainer, pl_module), on_step=False)


class GenerationMetrics(Callback):
    """Greedy answers to held-out chat rows at validation, scored against the reference answers.

    Logs `val/gen/exact_match` (after stripping and case folding), `val/gen/rougeL` (F-measure) and
    `val/gen/bleu` (4-gram) from torchmetrics, averaged over the rows, on every rank.

    Args:
        dataset: JSONL of chat rows (`messages`, OpenAI style): the last assistant message is the
            reference, the messages before it the prompt (SFT validation files).
        reference: instead, the column holding the reference answer, every message being the prompt
            (e.g. `solution` for GRPO prompt rows such as data/grpo/val.jsonl).
        limit: use only the first N rows.
        max_new_tokens: answer length cap.
    """

    def __init__(
        self, dataset: str, reference: str | None = None, limit: int | None = 16, max_new_tokens: int = 64
    ):
        self.rows = read_references(Path(dataset), reference, limit)
        self.max_new_tokens = max_new_tokens
        self.history: list[tuple[int, dict[str, float]]] = []

    @torch.no_grad()
    def answers(self, pl_module) -> list[str]:
        tok, model = pl_module.tokenizer, pl_module.model
        was_training = model.training
        model.eval()
        out = []
        try:
            for prompt, _ in self.rows:
                ids = tok.apply_chat_template(
                    prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
                ).to(pl_module.device)
                generated = model.generate(
                    **ids, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                )
                out.append(tok.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
        finally:
            model.train(was_training)
        return [text.strip() for text in out]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        scores = generation_scores(self.answers(pl_module), [ref for _, ref in self.rows])
        self.history.append((trainer.global_step, scores))
        for name, value in scores.items():
            pl_module.log(f"val/gen/{name}", value, on_epoch=True, sync_dist=False)


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match, ROUGE-L F-measure and BLEU-4 of predictions against one reference each."""
    from torchmetrics.text import BLEUScore, ROUGEScore

    exact = sum(
        p.strip().casefold() == r.strip().casefold() for p, r in zip(predictions, references, strict=True)
    )
    rouge = ROUGEScore(rouge_keys="rougeL")(predictions, references)["rougeL_fmeasure"]
    bleu = BLEUScore(n_gram=4, smooth=True)(predictions, [[r] for r in references])
    return {"exact_match": exact / len(references), "rougeL": float(rouge), "bleu": float(bleu)}


def read_references(
    path: Path, reference: str | None, limit: int | None
) -> list[tuple[list[dict[str, Any]], str]]:
    """(prompt messages, reference answer) per row; every bad row is reported at once."""
    rows, problems = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        messages = row.get("messages") or []
        if reference is not None:
            if not messages or reference not in row:
                problems.append(f"{path}:{number}: needs `messages` and a `{reference}` column")
                continue
            rows.append((messages, str(row[reference])))
        elif len(messages) < 2 or messages[-1].get("role") != "assistant":
            problems.append(f"{path}:{number}: needs `messages` ending with an assistant reply")
        else:
            rows.append((messages[:-1], messages[-1]["content"]))
    if problems:
        raise ValueError("GenerationMetrics dataset: " + "; ".join(problems))
    if not rows:
        raise ValueError(f"GenerationMetrics dataset {path} has no rows")
    return rows[:limit] if limit else rows
