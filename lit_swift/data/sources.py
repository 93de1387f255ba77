"""Files and hub ids -> raw dict rows with provenance: `path#N` sampling, mixing, validation split and
streaming. No tokens here; `rows.to_canonical` turns each raw row into a canonical row.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from lit_swift.data.rows import RowError, RowKind, to_canonical
from lit_swift.types import CanonicalRow

T = TypeVar("T")
MAX_LISTED = 20
"""How many `file:line: reason` problems an error message or report lists before summarising."""
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")
_WS = re.compile(r"\s*")


@dataclass
class DatasetSpec:
    """One dataset of a mixture.

    Args:
        path: A local file (.jsonl, .json, .csv, .parquet), a local folder, or a hub dataset id. A
            ``#N`` suffix takes N rows: a seeded shuffle, repeating whole passes when N exceeds the
            dataset (as ms-swift does); when streaming, the first N rows.
        columns: Renames applied to every row first, raw column -> expected column, e.g.
            ``{"question": "query", "answer": "response"}``.
        num_rows: Same as the ``#N`` suffix (set one or the other).
        split: The split to read for hub ids and local folders.
    """

    path: str
    columns: dict[str, str] | None = None
    num_rows: int | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        base, sep, n = self.path.rpartition("#")
        if sep and n.isdigit() and not Path(self.path).exists():
            if self.num_rows is not None:
                raise ValueError(f"{self.path!r}: give the row count as '#N' or as num_rows, not both")
            self.path, self.num_rows = base, int(n)
        if self.num_rows is not None and self.num_rows <= 0:
            raise ValueError(
                f"{self.path}#{self.num_rows}: num_rows must be positive, got {self.num_rows}, so there would be "
                "nothing to train on (take N >= 1 rows, or drop the #N suffix)"
            )


@dataclass(frozen=True)
class Provenance:
    """Where a row came from: file (or hub id) and 1-based line (see `RawRow.line`)."""

    source: str
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class RawRow:
    """One row as read, before normalisation.

    `line` is 1-based: the file line for .jsonl and JSON-lines .json; the line where the element
    starts for a .json array; the line where the record starts for .csv (the header is line 1, so
    the first record is usually line 2); the row number for .parquet, folders and hub datasets.
    """

    data: dict[str, Any]
    source: str
    line: int

    @property
    def provenance(self) -> Provenance:
        return Provenance(self.source, self.line)


@dataclass
class BadRecord:
    """An unreadable record (malformed JSON, wrong CSV field count, not an object) or invalid row.

    `reason` is the text users read after ``file:line:``; `code` groups reasons in reports.
    """

    where: Provenance
    reason: str
    code: str


@dataclass
class LoadReport:
    """What loading kept and skipped; callers log `summary()`, so nothing is dropped silently."""

    kind: str = ""
    num_read: int = 0
    """Records read, unreadable ones included (after `#N` sampling)."""
    num_kept: int = 0
    """Records that became canonical rows."""
    num_rows: int = 0
    """Rows returned after mixing (differs from `num_kept` only when interleaving)."""
    skipped: Counter[str] = field(default_factory=Counter)
    """Skipped records by reason code (see `RowError.code`)."""
    problems: list[str] = field(default_factory=list)
    """The first `MAX_LISTED` distinct problems as ``file:line: reason``."""
    per_source: dict[str, int] = field(default_factory=dict)
    """Kept rows per source."""

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, where: Provenance, reason: str, code: str) -> None:
        self.num_read += 1
        self.skipped[code] += 1
        text = f"{where}: {reason}"
        if len(self.problems) < MAX_LISTED and text not in self.problems:
            self.problems.append(text)

    def keep(self, source: str) -> None:
        self.num_read += 1
        self.num_kept += 1
        self.per_source[source] = self.per_source.get(source, 0) + 1

    def summary(self) -> str:
        text = f"kept {self.num_kept} of {self.num_read} rows (kind {self.kind!r})"
        if self.num_rows != self.num_kept:
            text += f", {self.num_rows} after mixing"
        if self.num_skipped:
            counts = ", ".join(f"{code} {n}" for code, n in self.skipped.most_common())
            text += f"; skipped {self.num_skipped}: {counts}; e.g. " + "; ".join(self.problems[:3])
        return text

    def error(self) -> str:
        """`file:line: reason (fix)` of the first bad row; the others (up to `MAX_LISTED`) on the next lines."""
        fix = f"fix the row, map its columns with `columns`, or set on_bad_row: skip; kind {self.kind!r}"
        if self.num_skipped == 1:
            return f"{self.problems[0]} ({fix})"
        more = self.num_skipped - len(self.problems)
        lines = [f"  {p}" for p in self.problems[1:]] + ([f"  ... and {more} more"] if more > 0 else [])
        head = f"{self.problems[0]} ({fix}); {self.num_skipped} bad rows in all:"
        return "\n".join([head, *lines])

    def reasons(self) -> str:
        """Rows read and kept, and the skipped ones by reason: `read 3, kept 0 (bad_json 2, no_format 1)`."""
        counts = ", ".join(f"{code} {n}" for code, n in self.skipped.most_common())
        return f"read {self.num_read}, kept {self.num_kept}" + (f" ({counts})" if counts else "")


def json_error(e: json.JSONDecodeError) -> str:
    """The reason after `file:line:`; the column counts within that line (1-based)."""
    return f"invalid JSON at column {e.colno}: {e.msg}"


def _record(obj: Any, source: str, line: int) -> RawRow | BadRecord:
    if isinstance(obj, dict):
        return RawRow(obj, source, line)
    return BadRecord(
        Provenance(source, line), f"expected a JSON object, got {type(obj).__name__}", "bad_type"
    )


def _iter_jsonl(path: str) -> Iterator[RawRow | BadRecord]:
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text.rstrip("\r\n"))  # so a truncated line errs at its own end
            except json.JSONDecodeError as e:
                yield BadRecord(Provenance(path, line), json_error(e), "bad_json")
                continue
            yield _record(obj, path, line)


def _iter_json(path: str) -> Iterator[RawRow | BadRecord]:
    """A JSON array (line numbers of each element's start), or JSON lines in a .json file."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    pos = _WS.match(text).end()
    if not text.startswith("[", pos):
        yield from _iter_jsonl(path)
        return
    decoder, counted, line = json.JSONDecoder(), 0, 1
    pos = _WS.match(text, pos + 1).end()
    while not text.startswith("]", pos):
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield BadRecord(Provenance(path, e.lineno), json_error(e), "bad_json")
            return
        line, counted = line + text.count("\n", counted, pos), pos
        yield _record(obj, path, line)
        pos = _WS.match(text, end).end()
        if text.startswith(",", pos):
            pos = _WS.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            reason = "invalid JSON: expected ',' or ']' after an array element"
            yield BadRecord(Provenance(path, text.count("\n", 0, pos) + 1), reason, "bad_json")
            return


def _iter_csv(path: str) -> Iterator[RawRow | BadRecord]:
    """Stdlib csv: every cell is a string; `line` is where the record starts (header = line 1)."""
    csv.field_size_limit(2**31 - 1)  # long chat texts exceed the 128 KiB default
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        prev = reader.line_num
        for cells in reader:
            start, prev = prev + 1, reader.line_num
            if not cells:
                continue
            if len(cells) != len(header):
                reason = f"expected {len(header)} fields like the header, got {len(cells)}"
                yield BadRecord(Provenance(path, start), reason, "bad_record")
                continue
            yield RawRow(dict(zip(header, cells, strict=True)), path, start)


def _iter_parquet(path: str) -> Iterator[RawRow | BadRecord]:
    import pyarrow.parquet as pq  # a `datasets` dependency; imported lazily as it is slow to import

    rows = (row for batch in pq.ParquetFile(path).iter_batches(batch_size=1024) for row in batch.to_pylist())
    for line, row in enumerate(rows, 1):
        yield RawRow(row, path, line)


_READERS = {".jsonl": _iter_jsonl, ".json": _iter_json, ".csv": _iter_csv, ".parquet": _iter_parquet}


def _offline() -> bool:
    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def _iter_datasets(spec: DatasetSpec, streaming: bool) -> Iterator[RawRow | BadRecord]:
    """A local folder or hub id through `datasets.load_dataset`; `line` is the 1-based row number."""
    is_dir = Path(spec.path).is_dir()
    unreachable = f"dataset {spec.path!r} is neither a local file nor reachable on the hub"
    if not is_dir and _offline():
        raise ValueError(f"{unreachable} (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)")
    import datasets

    try:
        ds = datasets.load_dataset(spec.path, split=spec.split, streaming=streaming)
    except Exception as e:  # network, auth and missing-repo errors all mean the same to the user
        if is_dir:
            raise ValueError(f"cannot read dataset folder {spec.path!r}: {e}") from e
        raise ValueError(f"{unreachable} ({type(e).__name__}: {e})") from e
    for line, row in enumerate(ds, 1):
        yield RawRow(dict(row), spec.path, line)


def _read(spec: DatasetSpec, streaming: bool) -> Iterator[RawRow | BadRecord]:
    path = Path(spec.path)
    if path.is_file():
        if path.suffix.lower() not in _READERS:
            raise ValueError(
                f"{spec.path}: unsupported file type {path.suffix!r} (convert it to one of {', '.join(FILE_TYPES)})"
            )
        return _READERS[path.suffix.lower()](spec.path)
    looks_local = path.suffix.lower() in FILE_TYPES or spec.path.startswith(("/", "./", "../", "~"))
    if looks_local and not path.is_dir():
        raise ValueError(f"{spec.path}: no such file (relative paths start at {os.getcwd()})")
    return _iter_datasets(spec, streaming)


def _sample(rows: list[RawRow], num_rows: int | None, seed: int) -> list[RawRow]:
    """ms-swift's `#N`: whole passes in file order, then a seeded sample of the remainder."""
    if num_rows is None or not rows:
        return rows
    passes, rest = divmod(num_rows, len(rows))
    return rows * passes + [rows[i] for i in random.Random(seed).sample(range(len(rows)), rest)]


def _load(spec: DatasetSpec, seed: int) -> list[RawRow | BadRecord]:
    """Unreadable records first, then the (`#N`-sampled) rows."""
    items = list(_read(spec, streaming=False))
    rows = _sample([x for x in items if isinstance(x, RawRow)], spec.num_rows, seed)
    return [x for x in items if isinstance(x, BadRecord)] + rows


def iter_records(spec: DatasetSpec) -> Iterator[RawRow | BadRecord]:
    """Every record of one dataset, lazily and in file order: rows and unreadable records alike.

    The path is checked now (a missing local file or an unsupported type raises `ValueError`); reading
    starts at the first `next()`. With `#N` it stops after the first N rows. A .json array is read whole.
    """
    return _first_rows(_read(spec, streaming=True), spec.num_rows)


def _first_rows(items: Iterable[RawRow | BadRecord], num_rows: int | None) -> Iterator[RawRow | BadRecord]:
    count = 0
    for item in items:
        yield item
        count += isinstance(item, RawRow)
        if count == num_rows:
            return


def normalise(
    item: RawRow | BadRecord, kind: RowKind, columns: dict[str, str] | None
) -> tuple[CanonicalRow, Provenance] | BadRecord:
    """A record as a canonical row with its provenance, or as a `BadRecord` saying why it is not one."""
    if isinstance(item, BadRecord):
        return item
    try:
        return to_canonical(item.data, kind, columns), item.provenance
    except RowError as e:
        return BadRecord(item.provenance, e.reason, e.code)


def _canonical(
    items: Iterable[RawRow | BadRecord], kind: RowKind, spec: DatasetSpec, report: LoadReport, fail_fast: bool
) -> Iterator[tuple[CanonicalRow, Provenance]]:
    """Normalise rows; bad ones raise at once (`fail_fast`) or are counted in `report`."""
    for item in items:
        result = normalise(item, kind, spec.columns)
        if not isinstance(result, BadRecord):
            report.keep(result[1].source)
            yield result
        elif fail_fast:
            raise ValueError(f"{result.where}: {result.reason}")
        else:
            report.skip(result.where, result.reason, result.code)


def load_raw(spec: DatasetSpec, seed: int = 42) -> list[RawRow]:
    """Read every raw row of one dataset (after `#N` sampling).

    Args:
        spec: The dataset to read.
        seed: Seed of the `#N` sampling.

    Raises:
        ValueError: One message listing every unreadable record as ``file:line: reason``, or the
            path is neither a readable local file/folder nor a reachable hub dataset.
    """
    items, report = _load(spec, seed), LoadReport(kind="raw")
    for bad in items:
        if isinstance(bad, BadRecord):
            report.skip(bad.where, bad.reason, bad.code)
    if report.num_skipped:
        raise ValueError(report.error())
    return items


def load_mixture(
    specs: Sequence[DatasetSpec],
    kind: RowKind,
    on_bad_row: Literal["raise", "skip"] = "raise",
    seed: int = 42,
    mix: Literal["concat", "interleave"] = "concat",
    probabilities: list[float] | None = None,
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted",
) -> tuple[list[tuple[CanonicalRow, Provenance]], LoadReport]:
    """Read and normalise every dataset, then concatenate or interleave them.

    Args:
        specs: The datasets, in order.
        kind: The canonical row the objective expects.
        on_bad_row: ``raise``: collect every unreadable or invalid row and raise one `ValueError`
            listing ``file:line: reason`` (the first `MAX_LISTED`); ``skip``: drop them and count
            them by reason in the report.
        seed: Seed for `#N` sampling and interleaving.
        mix: ``concat`` keeps datasets in order; ``interleave`` draws rows from them in turn.
        probabilities: Interleave weights, one per dataset (default: round robin).
        stopping_strategy: Interleave until the first dataset runs out, or until every row of every
            dataset was drawn once (restarting exhausted ones), like `datasets.interleave_datasets`.

    Returns:
        ``(rows, report)``: each row with its provenance, and the report to log.
    """
    if probabilities is not None and mix != "interleave":
        raise ValueError("probabilities only apply to mix='interleave'")
    report = LoadReport(kind=kind)
    per_source = [list(_canonical(_load(s, seed), kind, s, report, fail_fast=False)) for s in specs]
    if on_bad_row == "raise" and report.num_skipped:
        raise ValueError(report.error())
    if mix == "interleave":
        rows = _interleave(per_source, [s.path for s in specs], probabilities, seed, stopping_strategy)
    else:
        rows = [r for kept in per_source for r in kept]
    report.num_rows = len(rows)
    return rows, report


def _interleave(
    sources: list[list[T]], names: list[str], probs: list[float] | None, seed: int, stop: str
) -> list[T]:
    k = len(sources)
    if probs is not None and (len(probs) != k or min(probs) < 0 or sum(probs) <= 0):
        raise ValueError(f"probabilities must be {k} non-negative weights, not all zero; got {probs}")
    active = [i for i in range(k) if probs is None or probs[i] > 0]
    for i in active:
        if not sources[i]:
            raise ValueError(f"cannot interleave: {names[i]} has no valid rows")
    rng, pos, exhausted, out = random.Random(seed), [0] * k, set(), []
    for step in itertools.count():
        i = rng.choices(range(k), probs)[0] if probs else active[step % len(active)]
        out.append(sources[i][pos[i]])
        pos[i] += 1
        if pos[i] == len(sources[i]):
            exhausted.add(i)
            if stop == "first_exhausted" or len(exhausted) == len(active):
                return out
            pos[i] = 0
    raise AssertionError("unreachable")


def split_validation(rows: Sequence[T], val_split: float, seed: int = 42) -> tuple[list[T], list[T]]:
    """Deterministically hold out a fraction of rows; both parts keep the original order.

    Args:
        rows: The rows to split.
        val_split: Fraction in [0, 1) held out for validation (at least one row when > 0).
        seed: Seed choosing the held-out rows.
    """
    if not 0 <= val_split < 1:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")
    if val_split == 0:
        return list(rows), []
    num_val = max(1, round(len(rows) * val_split))
    if num_val >= len(rows):
        raise ValueError(f"val_split={val_split} leaves no training rows out of {len(rows)}")
    held = set(random.Random(seed).sample(range(len(rows)), num_val))
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def iter_raw(
    spec: DatasetSpec, on_bad_row: Literal["raise", "skip"] = "raise", report: LoadReport | None = None
) -> Iterator[RawRow]:
    """Stream raw rows lazily (constant memory for .jsonl, .csv, .parquet and hub streaming).

    A `#N` suffix takes the first N rows. A .json array is read whole.

    Args:
        spec: The dataset to stream.
        on_bad_row: ``raise`` at the first unreadable record with ``file:line: reason``; ``skip``
            counts it in `report`.
        report: Collects skipped records in skip mode.
    """
    report = report if report is not None else LoadReport(kind="raw")
    for item in iter_records(spec):
        if isinstance(item, RawRow):
            yield item
        elif on_bad_row == "raise":
            raise ValueError(f"{item.where}: {item.reason}")
        else:
            report.skip(item.where, item.reason, item.code)


def iter_canonical(
    spec: DatasetSpec,
    kind: RowKind,
    on_bad_row: Literal["raise", "skip"] = "raise",
    report: LoadReport | None = None,
) -> Iterator[tuple[CanonicalRow, Provenance]]:
    """Stream canonical rows with their provenance; the streaming twin of `load_mixture`.

    Args:
        spec: The dataset to stream.
        kind: The canonical row the objective expects.
        on_bad_row: ``raise`` at the first bad row with ``file:line: reason``; ``skip`` counts it.
        report: Collects kept and skipped counts (pass one to log its `summary()`).
    """
    report = report if report is not None else LoadReport()
    report.kind = kind
    for row in _canonical(iter_records(spec), kind, spec, report, fail_fast=on_bad_row == "raise"):
        report.num_rows += 1
        yield row
