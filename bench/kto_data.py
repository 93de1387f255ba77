"""KTO rows from the shared benchmark's DPO pairs: each pair gives a desirable and an undesirable row.

Input: ms-swift's RLHF format (`messages` ending with the chosen assistant turn, plus `rejected_response`), as
in /work/shared/bench/data/dpo.jsonl. Output: ms-swift's and lit-swift's KTO format, `messages` ending with
the completion plus a boolean `label`, pair by pair (chosen then rejected), so every tool reads the same rows.

    python bench/kto_data.py /work/shared/bench/data/dpo.jsonl runs/bench-data/kto.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def kto_rows(pair: dict) -> list[dict]:
    messages = pair["messages"]
    rejected = [*messages[:-1], {"role": "assistant", "content": pair["rejected_response"]}]
    return [{"messages": messages, "label": True}, {"messages": rejected, "label": False}]


def convert(src: str, dst: str) -> int:
    """Write the KTO rows of every pair in `src` to `dst`; returns the number of rows written."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(src) as f, open(dst, "w") as out:
        for line in f:
            if line.strip():
                for row in kto_rows(json.loads(line)):
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    count += 1
    return count


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python bench/kto_data.py DPO_JSONL KTO_JSONL")
    print(f"{convert(sys.argv[1], sys.argv[2])} KTO rows -> {sys.argv[2]}")
