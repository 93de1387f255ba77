"""Build offline embedding and reranker data from the `chatterbot-corpus` PyPI package (question <-> answer).

Writes data/embedding/{train,val}.jsonl and data/reranker/{train,val}.jsonl as `query/positive/negatives`
rows; hard negatives are answers from the same topic file; the validation split holds out whole queries.
Run: `python scripts/make_embedding_data.py` (needs `pip install chatterbot-corpus`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

import yaml


def corpus_files() -> list[Path]:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None:
        raise SystemExit("needs the chatterbot-corpus package: pip install chatterbot-corpus")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "english"
    return sorted(root.glob("*.yml"))


def pairs_by_topic() -> dict[str, list[tuple[str, str]]]:
    """First (question, answer) of every conversation; each question and each answer used once."""
    seen_q, seen_a, topics = set(), set(), {}
    for path in corpus_files():
        conversations = yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []
        for turns in conversations:
            if len(turns) < 2 or not all(isinstance(t, str) and t.strip() for t in turns[:2]):
                continue
            query, answer = turns[0].strip(), turns[1].strip()
            if query.lower() in seen_q or answer.lower() in seen_a or len(answer) < 8:
                continue
            seen_q.add(query.lower())
            seen_a.add(answer.lower())
            topics.setdefault(path.stem, []).append((query, answer))
    return topics


def rows(topics: dict[str, list[tuple[str, str]]], num_negatives: int, rng: random.Random) -> list[dict]:
    out = []
    for pairs in topics.values():
        answers = [a for _, a in pairs]
        for query, answer in pairs:
            others = [a for a in answers if a != answer]
            out.append({"query": query, "positive": answer, "negatives": rng.sample(others, num_negatives)})
    return out


def write(path: Path, data: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in data:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path}: {len(data)} rows, {path.stat().st_size // 1024} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    topics = {t: p for t, p in pairs_by_topic().items() if len(p) >= 6}  # enough same-topic negatives
    for folder, num_negatives in (("embedding", 1), ("reranker", 4)):
        rng = random.Random(args.seed)
        data = rows(topics, num_negatives, rng)
        rng.shuffle(data)
        num_val = round(len(data) * args.val_fraction)
        write(args.out / folder / "val.jsonl", data[:num_val])
        write(args.out / folder / "train.jsonl", data[num_val:])


if __name__ == "__main__":
    main()
