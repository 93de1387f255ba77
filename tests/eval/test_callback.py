"""LMEval on the live model during `lit-swift fit`: logs eval/<task>/<metric>, ModelCheckpoint picks the best step;
GenerationMetrics logs exact match / ROUGE-L / BLEU at validation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from lit_swift import cli

ROOT = Path(__file__).resolve().parents[2]
MONITOR = "eval/tiny_ppl/word_perplexity"


@pytest.fixture(scope="module")
def fitted(tiny_tasks_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit-eval")
    run = {
        "trainer": {
            "max_steps": 4,
            "default_root_dir": str(out),
            "callbacks": [
                {"class_path": "lit_swift.callbacks.eval.LMEval",
                 "init_args": {"tasks": "tiny_ppl", "include_path": [tiny_tasks_dir], "every_n_train_steps": 1,
                               "at_validation": False}},
                {"class_path": "lit_swift.callbacks.eval.GenerationMetrics",
                 "init_args": {"dataset": str(ROOT / "data/quickstart/identity.jsonl"), "limit": 2,
                               "max_new_tokens": 8}},
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"monitor": MONITOR, "mode": "min", "every_n_train_steps": 1, "save_top_k": 1,
                               "dirpath": str(out / "ckpt"), "filename": "step{step}",
                               "auto_insert_metric_name": False}},
            ],
        },
        "data": {"init_args": {"val_split": 0.25}},
    }  # fmt: skip
    extra = out / "eval.yaml"
    extra.write_text(yaml.safe_dump(run))
    return cli.run_trainer(["fit", "--config", str(ROOT / "configs/debug/sft.yaml"), "--config", str(extra)])


def test_lmeval_logs_and_checkpoint_keeps_the_best_step(fitted):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lit_swift.callbacks.eval import LMEval

    trainer = fitted.trainer
    lmeval = next(c for c in trainer.callbacks if isinstance(c, LMEval))
    history = [(step, scores[MONITOR]) for step, scores in lmeval.history]
    assert [step for step, _ in history] == [1, 2, 3, 4]
    assert len({round(v, 6) for _, v in history}) > 1  # the live (trained) adapters are what gets scored
    best_step, best = min(history, key=lambda item: item[1])
    checkpoint = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert checkpoint.best_model_score.item() == pytest.approx(best)
    assert Path(checkpoint.best_model_path).name == f"step{best_step}.ckpt"
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    logged = [float(r[MONITOR]) for r in rows if r.get(MONITOR)]
    assert logged == pytest.approx([v for _, v in history])


def test_generation_metrics_at_validation(fitted):
    from lit_swift.callbacks.eval import GenerationMetrics

    trainer = fitted.trainer
    gen = next(c for c in trainer.callbacks if isinstance(c, GenerationMetrics))
    assert [step for step, _ in gen.history] == [2, 4]  # 6 training rows, batch 4: 2 steps per epoch
    scores = gen.history[-1][1]
    assert set(scores) == {"exact_match", "rougeL", "bleu"} and all(0 <= v <= 1 for v in scores.values())
    assert trainer.callback_metrics["val/gen/rougeL"].item() == pytest.approx(scores["rougeL"])


def test_generation_scores_by_hand():
    """'my name is lit' vs itself: exact, ROUGE-L 1, BLEU 1; 'a b' vs 'a c': LCS 1 of 2 words -> F 0.5."""
    from lit_swift.callbacks.eval import generation_scores

    same = generation_scores(["My name is Lit"], ["my name is lit"])
    assert same["exact_match"] == 1.0 and same["rougeL"] == pytest.approx(1.0)
    half = generation_scores(["a b"], ["a c"])
    assert half["exact_match"] == 0.0 and half["rougeL"] == pytest.approx(0.5)


def test_generation_metrics_rejects_rows_without_a_reference(tmp_path):
    from lit_swift.callbacks.eval import GenerationMetrics

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: needs `messages` ending with an assistant reply"):
        GenerationMetrics(dataset=str(bad))


def test_generation_metrics_reads_grpo_prompt_rows():
    from lit_swift.callbacks.eval import read_references

    rows = read_references(ROOT / "data/grpo/val.jsonl", "solution", 2)
    assert rows[0] == ([{"role": "user", "content": "Calculate 32 - 15. Reply with only the number."}], "17")
    assert len(rows) == 2
