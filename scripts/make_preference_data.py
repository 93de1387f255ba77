"""Build the small shipped preference data sets offline: data/preference/{dpo,kto}_{train,val}.jsonl.

Sources (pip install champ-dataset reasoning-gym): CHAMP competition-math problems, where the reference
solution is preferred over a model solution cut after its human-marked first wrong step, and
reasoning-gym `chain_sum` sums, where a correct running-sum derivation is preferred over one with a
corrupted step. KTO rows reuse the pairs (chosen -> desirable, rejected -> undesirable). Problems are
split train/validation before pairing, so no validation prompt is seen in training.

    python scripts/make_preference_data.py [--out data/preference] [--max-tokens 480]
"""

from __future__ import annotations

import argparse
import json
import random
from importlib import resources
from pathlib import Path

SYSTEM = "You are a careful math assistant. Show your work briefly, then give the final answer."


def champ_pairs(max_chars: int) -> list[dict]:
    """(problem, reference solution, annotated wrong solution up to its first wrong step)."""
    data = json.loads(resources.files("champ_dataset").joinpath("dataset_files/v0.json").read_text())
    pairs = []
    for pid, problem in sorted(data["problems"].items()):
        steps = " ".join(step["_text"] for step in problem["solution"]["steps"])
        chosen = f"{steps}\nFinal answer: {problem['_answer']}"
        for key, note in sorted(problem["fws_annotations"].items()):
            if note.get("end_idx") is None:  # no wrong step marked: not a usable negative
                continue
            rejected = note["text"][: note["end_idx"]].rstrip()
            if len(chosen) > max_chars or len(rejected) > max_chars or not rejected:
                continue
            pairs.append({"group": pid, "prompt": problem["_text"], "chosen": chosen, "rejected": rejected,
                          "source": f"champ:{pid}:{key}"})  # fmt: skip
    return pairs


def _derivation(terms: list[int], ops: list[str], corrupt_at: int | None, rng: random.Random) -> str:
    total, lines = terms[0], []
    for i, (op, term) in enumerate(zip(ops, terms[1:], strict=True)):
        new = total + term if op == "+" else total - term
        if i == corrupt_at:
            new += rng.choice([-10, -2, -1, 1, 2, 10])
        lines.append(f"{total} {op} {term} = {new}")
        total = new
    return "\n".join(lines) + f"\nFinal answer: {total}"


def chain_sum_pairs(num: int, seed: int) -> list[dict]:
    """reasoning-gym chain sums: a correct running sum beats one with one corrupted step."""
    import reasoning_gym as rg

    rng, pairs = random.Random(seed), []
    for item in rg.create_dataset("chain_sum", size=num, seed=seed):
        tokens = item["metadata"]["expression"].split()
        terms, ops = [int(t) for t in tokens[::2]], tokens[1::2]
        chosen = _derivation(terms, ops, None, rng)
        assert chosen.endswith(f"Final answer: {item['answer']}"), item
        rejected = _derivation(terms, ops, rng.randrange(len(ops)), rng)
        index = item["metadata"]["source_index"]
        pairs.append({"group": f"chain_sum_{index}", "prompt": item["question"], "chosen": chosen,
                      "rejected": rejected, "source": f"reasoning_gym:chain_sum:{index}"})  # fmt: skip
    return pairs


def fits(pairs: list[dict], max_tokens: int) -> list[dict]:
    """Keep pairs whose prompt + longer answer is at most `max_tokens` with SmolLM2's chat template."""
    from lit_swift import models

    tok = models.load_tokenizer("smollm2-135m-instruct")

    def length(prompt: str, answer: str) -> int:
        chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer}]  # fmt: skip
        return len(tok.apply_chat_template(chat, tokenize=True, return_dict=False))

    return [p for p in pairs if max(length(p["prompt"], p[k]) for k in ("chosen", "rejected")) <= max_tokens]


def split(pairs: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    groups = sorted({p["group"] for p in pairs})
    held = set(random.Random(seed).sample(groups, max(1, round(len(groups) * val_fraction))))
    return [p for p in pairs if p["group"] not in held], [p for p in pairs if p["group"] in held]


def dpo_row(p: dict) -> dict:
    messages = [{"role": "user", "content": p["prompt"]}]
    return {"system": SYSTEM, "messages": messages, "chosen": p["chosen"], "rejected": p["rejected"],
            "source": p["source"]}  # fmt: skip


def kto_rows(p: dict) -> list[dict]:
    return [
        {
            "system": SYSTEM,
            "messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p[key]}],
            "label": key == "chosen",
            "source": p["source"],
        }  # fmt: skip
        for key in ("chosen", "rejected")
    ]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{path}: {len(rows)} rows, {path.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/preference")
    parser.add_argument("--max-tokens", type=int, default=480)
    parser.add_argument("--max-chars", type=int, default=900)
    parser.add_argument("--num-champ", type=int, default=110, help="champ pairs kept (train + val)")
    parser.add_argument("--num-chain-sum", type=int, default=160)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    champ = fits(champ_pairs(args.max_chars), args.max_tokens)
    champ = sorted(rng.sample(champ, min(args.num_champ, len(champ))), key=lambda p: p["source"])
    pairs = champ + fits(chain_sum_pairs(args.num_chain_sum, args.seed), args.max_tokens)
    train, val = split(pairs, args.val_fraction, args.seed)
    rng.shuffle(train)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "dpo_train.jsonl", [dpo_row(p) for p in train])
    write(out / "dpo_val.jsonl", [dpo_row(p) for p in val])
    kto_train = [r for p in train for r in kto_rows(p)]
    rng.shuffle(kto_train)  # desirable and undesirable rows of one problem need not sit together
    write(out / "kto_train.jsonl", kto_train)
    write(out / "kto_val.jsonl", [r for p in val for r in kto_rows(p)])


if __name__ == "__main__":
    main()
