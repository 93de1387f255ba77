"""Write `data/cpt/stdlib_docs.jsonl`: a small plain-text corpus for continued pre-training (CPT) configs.

Each row is `{"text": ...}` holding one Python standard-library module docstring, so the corpus is
generated offline, deterministically, from the interpreter itself (run: `python scripts/make_cpt_data.py`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections colorsys contextlib copy csv dataclasses "
    "datetime decimal difflib dis enum fnmatch fractions functools getopt glob gzip hashlib heapq hmac html "
    "http imaplib inspect io ipaddress itertools json keyword linecache locale logging lzma mailbox math "
    "mimetypes numbers operator optparse os pathlib pickle pickletools platform plistlib poplib pprint "
    "pydoc queue quopri random re reprlib sched secrets selectors shelve shlex shutil signal smtplib socket "
    "sqlite3 statistics string struct subprocess symtable tabnanny tarfile tempfile textwrap threading "
    "timeit token tokenize trace traceback types typing unittest uuid warnings weakref zipfile zipimport"
).split()


def rows(max_chars: int) -> list[dict[str, str]]:
    """Module docstrings (cleaned, at least 200 characters) until `max_chars` characters in total."""
    out, total = [], 0
    for name in MODULES:
        try:
            doc = inspect.getdoc(importlib.import_module(name)) or ""
        except ImportError:
            continue
        if len(doc) < 200:
            continue
        text = doc[: max_chars - total]
        out.append({"text": text})
        total += len(text)
        if total >= max_chars:
            break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="data/cpt/stdlib_docs.jsonl")
    parser.add_argument("--max-chars", type=int, default=200_000)
    args = parser.parse_args()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = rows(args.max_chars)
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    print(f"wrote {len(data)} rows, {path.stat().st_size:,} bytes to {path}")


if __name__ == "__main__":
    main()
