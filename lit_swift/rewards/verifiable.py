"""Verifiable rewards: math answers (math-verify, with a plain-number fallback) and reasoning-gym's own scorers."""

from __future__ import annotations

import json
import re
from typing import Any

from lit_swift.rewards.base import Reward

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def answer_text(completion: str) -> str:
    """The text inside the last `<answer>...</answer>`, or the whole completion."""
    found = ANSWER_TAG.findall(completion)
    return found[-1].strip() if found else completion.strip()


def final_answer(completion: str) -> str:
    """The answer part of a completion: the last `<answer>` tag's text, else what follows the last `=`
    (the result of a worked equation), else the whole completion."""
    if ANSWER_TAG.search(completion):
        return answer_text(completion)
    return completion.rsplit("=", 1)[-1].strip()


def last_number(text: str) -> float | None:
    numbers = NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def plain_number_match(answer: str, solution: str) -> bool:
    """The last number of the answer equals the solution's (the fallback without math-verify)."""
    got, want = last_number(answer), last_number(str(solution))
    return got is not None and want is not None and abs(got - want) < 1e-9


class ExactMatch(Reward):
    """1.0 when the answer (inside `<answer>` tags if present), stripped, equals the row's `solution`.

    Args:
        column: the row column holding the reference answer.
    """

    def __init__(self, column: str = "solution"):
        self.column = column

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        if self.column not in kwargs:
            raise ValueError(f"ExactMatch needs a {self.column!r} column in the prompt rows")
        solutions = kwargs[self.column]
        return [float(answer_text(c) == str(s).strip()) for c, s in zip(completions, solutions, strict=True)]


class MathAccuracy(Reward):
    """1.0 when the completion's final answer equals the row's `solution`, else 0.0.

    The final answer is the last `<answer>` tag's text, else the text after the last `=`, else the
    whole completion (see `final_answer`); its LaTeX, or else its last number, is compared with the
    solution by math-verify when installed (`pip install lit-swift[rl]`: `1/2` equals `0.5`), by plain
    number otherwise. Expressions in plain text are not evaluated: a completion that only restates
    the question ("5 - 9 = ?") is wrong.

    Args:
        column: the row column holding the reference answer.
    """

    def __init__(self, column: str = "solution"):
        self.column = column
        try:
            import math_verify
        except ImportError:
            math_verify = None
        self.math_verify = math_verify

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        if self.column not in kwargs:
            raise ValueError(f"MathAccuracy needs a {self.column!r} column in the prompt rows")
        return [float(self.correct(c, s)) for c, s in zip(completions, kwargs[self.column], strict=True)]

    def correct(self, completion: str, solution: Any) -> bool:
        answer = final_answer(completion)
        if self.math_verify is not None:
            # LaTeX goes to math-verify whole; plain text only by its last number, so that restating
            # the question ("5 - 9 = ?", "to calculate 7 + 10, add") is not an expression equal to it
            latex = "\\" in answer or "$" in answer
            numbers = NUMBER.findall(answer.replace(",", ""))
            predicted = answer if latex else (numbers[-1] if numbers else "")
            gold = self.math_verify.parse(str(solution))
            parsed = self.math_verify.parse(predicted) if predicted else []
            if gold and parsed:
                return bool(self.math_verify.verify(gold, parsed))
        return plain_number_match(answer, str(solution))


class ReasoningGymScore(Reward):
    """reasoning-gym's own `score_answer` for the task named in the row's metadata (0..1).

    Rows carry the task's `solution` (its `answer`) and `metadata` (a dict or its JSON text, with
    `source_dataset`), as `scripts/make_grpo_data.py` writes them. Needs `pip install reasoning-gym`.

    Args:
        solution_column: the column with the reference answer.
        metadata_column: the column with the task's metadata.
        use_answer_tag: score the text inside `<answer>` tags when present.
    """

    def __init__(
        self,
        solution_column: str = "solution",
        metadata_column: str = "metadata",
        use_answer_tag: bool = True,
    ):
        self.solution_column, self.metadata_column = solution_column, metadata_column
        self.use_answer_tag = use_answer_tag

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        import reasoning_gym

        for column in (self.solution_column, self.metadata_column):
            if column not in kwargs:
                raise ValueError(f"ReasoningGymScore needs a {column!r} column in the prompt rows")
        out = []
        for completion, solution, metadata in zip(
            completions, kwargs[self.solution_column], kwargs[self.metadata_column], strict=True
        ):
            metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
            score = reasoning_gym.get_score_answer_fn(metadata["source_dataset"])
            answer = answer_text(completion) if self.use_answer_tag else completion
            out.append(float(score(answer, {"answer": solution, "metadata": metadata})))
        return out
