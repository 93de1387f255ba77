"""Build the shipped GRPO prompt sets offline from reasoning-gym: data/grpo/{train,val}.jsonl.

Questions are deduplicated and the first `--val` distinct ones are held out. Each row is a chat prompt with the task's answer in `solution` and reasoning-gym's metadata (JSON
text, with `source_dataset`) in `metadata`, so the `reasoning_gym` reward calls the task's own
`score_answer` and `accuracy` compares numbers.
    pip install reasoning-gym
    python scripts/make_grpo_data.py [--out data/grpo] [--train 512] [--val 128]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

INSTRUCTION = "Reply with only the number."


def rows(size: int, seed: int, digits: tuple[int, int], terms: int, operators: list[str]) -> list[dict]:
    import reasoning_gym

    data = reasoning_gym.create_dataset(
        "basic_arithmetic", size=size, seed=seed, min_terms=terms, max_terms=terms, min_digits=digits[0],
        max_digits=digits[1], operators=operators, allow_parentheses=False, allow_negation=False,
    )  # fmt: skip
    out = []
    for entry in data:
        question = f"{entry['question']} {INSTRUCTION}"
        out.append({
            "messages": [{"role": "user", "content": question}],
            "solution": entry["answer"],
            "metadata": json.dumps(entry["metadata"]),
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/grpo")
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--val", type=int, default=128)
    parser.add_argument("--min-digits", type=int, default=2)
    parser.add_argument("--max-digits", type=int, default=2)
    parser.add_argument("--terms", type=int, default=2)
    parser.add_argument("--operators", default="+,-")
    args = parser.parse_args(argv)
    operators = args.operators.split(",")
    # distinct questions only, held-out ones first: no validation question is ever trained on
    distinct = {
        r["messages"][0]["content"]: r
        for r in rows(
            4 * (args.train + args.val), 1, (args.min_digits, args.max_digits), args.terms, operators
        )
    }
    unique = list(distinct.values())
    val, train = unique[: args.val], unique[args.val : args.val + args.train]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("val", val[: args.val])):
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in split))
        print(f"{path}: {len(split)} rows")


if __name__ == "__main__":
    main()
