"""Build the small offline evaluation sets shipped with the lm-eval tasks in lit_swift/eval/tasks/.

Sources (pip install reasoning-gym chitchat-dataset), no network:
- `litswift_arith.jsonl`: reasoning-gym `chain_sum` problems (2-3 terms of 1-2 digits) for exact match after generation. Seeded apart
  from scripts/make_preference_data.py, and any question that appears in data/preference/ is dropped, so
  the DPO data never contains an evaluation question.
- `litswift_arith_mc.jsonl`: reasoning-gym `basic_arithmetic` problems with the true result and three
  distractors (off by one, off by ten, sign flipped, or digits swapped), scored by log-likelihood.
- `litswift_chitchat.jsonl`: Chit Chat Challenge dialogues (no lit-swift config trains on them) as
  alternating `User:` / `Assistant:` lines, for held-out perplexity.

    python scripts/make_eval_data.py [--out lit_swift/eval/tasks] [--num 100] [--num-dialogues 40]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def preference_prompts() -> set[str]:
    prompts = set()
    for path in sorted((ROOT / "data" / "preference").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            prompts.add(row.get("prompt", ""))
    return prompts


def arith_rows(num: int, seed: int) -> list[dict]:
    """chain_sum questions with integer answers (generate, extract the last number, exact match)."""
    import reasoning_gym as rg

    seen = preference_prompts()
    rows = []
    config = {"size": num * 2, "seed": seed, "min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
    for item in rg.create_dataset("chain_sum", **config):
        if item["question"] in seen:
            continue
        rows.append({"question": item["question"], "answer": str(item["answer"]),
                     "source": f"reasoning_gym:chain_sum:seed{seed}:{item['metadata']['source_index']}"})  # fmt: skip
        if len(rows) == num:
            break
    return rows


def distractors(answer: int, rng: random.Random) -> list[int]:
    """Three distinct wrong answers near the true one."""
    digits = str(abs(answer))
    swapped = int(digits[::-1]) * (1 if answer >= 0 else -1) if len(digits) > 1 else answer + 2
    pool = [answer + 1, answer - 1, answer + 10, answer - 10, -answer, swapped]
    wrong = sorted({w for w in pool if w != answer})
    rng.shuffle(wrong)
    return wrong[:3]


def arith_mc_rows(num: int, seed: int) -> list[dict]:
    """basic_arithmetic questions with four candidate answers; `label` indexes the true one."""
    import reasoning_gym as rg

    rng, rows = random.Random(seed), []
    config = {"size": num, "seed": seed, "min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
    for item in rg.create_dataset("basic_arithmetic", **config):
        answer = int(item["answer"])
        choices = [answer, *distractors(answer, rng)]
        rng.shuffle(choices)
        rows.append({"question": item["question"], "choices": [str(c) for c in choices],
                     "label": choices.index(answer),
                     "source": f"reasoning_gym:basic_arithmetic:seed{seed}:{item['metadata']['source_index']}"})  # fmt: skip
    return rows


def chitchat_rows(num: int, seed: int, max_chars: int) -> list[dict]:
    """Dialogues of 4+ turns, at most `max_chars` long, as `User:`/`Assistant:` lines."""
    import chitchat_dataset

    data = json.loads(Path(chitchat_dataset._PATH).read_text())
    candidates = []
    for key in sorted(data):
        turns = [" ".join(u["text"] for u in message) for message in data[key]["messages"]]
        lines = [f"{'User' if i % 2 == 0 else 'Assistant'}: {turn.strip()}" for i, turn in enumerate(turns)]
        text = "\n".join(lines)
        if len(turns) >= 4 and len(text) <= max_chars:
            candidates.append({"text": text, "source": f"chitchat:{key}"})
    return random.Random(seed).sample(candidates, num)


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "lit_swift" / "eval" / "tasks")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--num-dialogues", type=int, default=40)
    parser.add_argument("--max-chars", type=int, default=800)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out / "litswift_arith.jsonl", arith_rows(args.num, args.seed))
    write(args.out / "litswift_arith_mc.jsonl", arith_mc_rows(args.num, args.seed + 1))
    write(
        args.out / "litswift_chitchat.jsonl", chitchat_rows(args.num_dialogues, args.seed + 2, args.max_chars)
    )


if __name__ == "__main__":
    main()
