"""File readers keep file:line provenance; `path#N`, mixing, skipping, splitting and streaming."""

import json
import sys
import tracemalloc
import types
from collections import Counter

import pytest

from lit_swift.data.sources import (
    MAX_LISTED,
    DatasetSpec,
    LoadReport,
    Provenance,
    iter_canonical,
    iter_raw,
    load_mixture,
    load_raw,
    split_validation,
)
from lit_swift.types import ChatRow


def qa(i: int) -> dict:
    return {"query": f"q{i}", "response": f"r{i}"}


def write_jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_jsonl_lines_skip_blanks(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [qa(0), "", "  ", qa(1)])
    rows = load_raw(DatasetSpec(path))
    assert [(r.data, r.line, r.source) for r in rows] == [(qa(0), 1, path), (qa(1), 4, path)]
    assert str(rows[1].provenance) == f"{path}:4"


def test_jsonl_malformed_lines_are_all_listed(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [qa(0), '{"query": "x",', qa(1), "[1, 2]"])
    with pytest.raises(ValueError) as info:
        load_raw(DatasetSpec(path))
    msg = str(info.value)
    assert f"{path}:2: invalid JSON at column 15: Expecting property name enclosed in double quotes" in msg
    assert f"{path}:4: expected a JSON object, got list" in msg


def test_json_array_element_lines(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"query": "q0", "response": "r0"},\n\n  {"query": "q1",\n   "response": "r1"}\n]\n')
    rows = load_raw(DatasetSpec(str(path)))
    assert [(r.data, r.line) for r in rows] == [(qa(0), 2), (qa(1), 4)]


def test_json_array_errors_and_json_lines_in_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n  {"query": "q0"},\n  {"query": oops}\n]')
    with pytest.raises(ValueError, match=r"bad.json:3: invalid JSON at column 13: Expecting value"):
        load_raw(DatasetSpec(str(bad)))
    lines = tmp_path / "lines.json"
    write_jsonl(lines, [qa(0), qa(1)])
    assert [r.line for r in load_raw(DatasetSpec(str(lines)))] == [1, 2]


def test_csv_record_start_lines(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('query,response\nq0,r0\n"multi\nline",r1\n\nq2,r2,extra\nq3,r3\n')
    with pytest.raises(ValueError, match=r"a.csv:6: expected 2 fields like the header, got 3"):
        load_raw(DatasetSpec(str(path)))
    rows, report = load_mixture([DatasetSpec(str(path))], "chat", on_bad_row="skip")
    assert [str(p) for _, p in rows] == [f"{path}:2", f"{path}:3", f"{path}:7"]
    assert rows[1][0].messages[0]["content"] == "multi\nline"
    assert report.skipped == Counter(bad_record=1)


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([{**qa(i), "label": i % 2 == 0} for i in range(3)]), path)
    rows = load_raw(DatasetSpec(str(path)))
    assert [(r.data["query"], r.data["label"], r.line) for r in rows] == [
        ("q0", True, 1),
        ("q1", False, 2),
        ("q2", True, 3),
    ]
    kto, _ = load_mixture([DatasetSpec(str(path))], "kto")
    assert [r.label for r, _ in kto] == [True, False, True]


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"unsupported file type '.txt'"):
        load_raw(DatasetSpec(str(tmp_path / "a.txt")))
    with pytest.raises(ValueError, match=r"missing.jsonl: no such file"):
        load_raw(DatasetSpec(str(tmp_path / "missing.jsonl")))


def test_offline_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ValueError, match=r"'someorg/some-data' is neither a local file nor reachable on the hub \(offline"
    ):
        load_raw(DatasetSpec("someorg/some-data"))


def test_unreachable_hub_id(monkeypatch):
    def load_dataset(path, split, streaming):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(
        ValueError, match=r"reachable on the hub \(ConnectionError: no route to huggingface.co\)"
    ):
        load_raw(DatasetSpec("someorg/some-data"))


def test_path_hash_n_parsing(tmp_path):
    spec = DatasetSpec("data/a.jsonl#100")
    assert (spec.path, spec.num_rows) == ("data/a.jsonl", 100)
    assert DatasetSpec("org/name").num_rows is None
    with pytest.raises(ValueError, match="not both"):
        DatasetSpec("a.jsonl#3", num_rows=3)
    with pytest.raises(ValueError, match="must be positive"):
        DatasetSpec("a.jsonl#0")


def test_path_hash_n_subsample_is_seeded(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [qa(i) for i in range(10)])
    first = [r.line for r in load_raw(DatasetSpec(f"{path}#4"), seed=1)]
    assert len(first) == 4 and len(set(first)) == 4
    assert first == [r.line for r in load_raw(DatasetSpec(f"{path}#4"), seed=1)]
    assert first != [r.line for r in load_raw(DatasetSpec(f"{path}#4"), seed=2)]


def test_path_hash_n_repeats_when_larger(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [qa(i) for i in range(4)])
    lines = [r.line for r in load_raw(DatasetSpec(f"{path}#10"), seed=0)]
    assert len(lines) == 10 and lines[:8] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert sorted(Counter(lines).values()) == [2, 2, 3, 3]


def test_mixture_raise_lists_every_problem_once(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [qa(0), {"query": "q"}, "{bad"])
    b = write_jsonl(tmp_path / "b.jsonl", [{"foo": 1}, qa(1)])
    with pytest.raises(ValueError) as info:
        load_mixture([DatasetSpec(a), DatasetSpec(b)], "chat")
    msg = str(info.value)
    head = msg.splitlines()[0]  # `file:line: reason (fix)` of the first, then one line per other row
    assert head.startswith(f"{a}:3: invalid JSON at column 2:") and "(fix the row" in head
    assert head.endswith("kind 'chat'); 3 bad rows in all:") and len(msg.splitlines()) == 3
    assert f"{a}:2: chat row must end with an assistant turn" in msg
    assert f"{a}:3: invalid JSON" in msg
    assert f"{b}:1: row has none of the columns of a known chat format: keys ['foo']" in msg


def test_mixture_raise_truncates_long_lists(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"x": i} for i in range(MAX_LISTED + 5)])
    with pytest.raises(ValueError) as info:
        load_mixture([DatasetSpec(path)], "chat")
    assert str(info.value).count("no_format") == 0 and str(info.value).count(f"{path}:") == MAX_LISTED
    assert "... and 5 more" in str(info.value)


def test_mixture_skip_counts_by_reason(tmp_path):
    a = write_jsonl(
        tmp_path / "a.jsonl", [qa(0), {"foo": 1}, {"bar": 2}, {"query": "q", "response": " "}, "{bad"]
    )
    rows, report = load_mixture([DatasetSpec(a, columns={"bar": "baz"})], "chat", on_bad_row="skip")
    assert rows == [
        (
            ChatRow([{"role": "user", "content": "q0"}, {"role": "assistant", "content": "r0"}]),
            Provenance(a, 1),
        )
    ]
    assert report.skipped == Counter(no_format=2, empty_answer=1, bad_json=1)
    assert (report.num_read, report.num_kept, report.num_skipped, report.per_source) == (5, 1, 4, {a: 1})
    summary = report.summary()
    assert summary.startswith("kept 1 of 5 rows (kind 'chat'); skipped 4: no_format 2, ")
    assert f"{a}:2: row has none" in summary


def test_mixture_concat_and_renames(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [qa(0), qa(1)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": "q2", "answer": "r2"}])
    specs = [DatasetSpec(a), DatasetSpec(b, columns={"question": "query", "answer": "response"})]
    rows, report = load_mixture(specs, "chat")
    assert [str(p) for _, p in rows] == [f"{a}:1", f"{a}:2", f"{b}:1"]
    assert rows[2][0].messages[1]["content"] == "r2" and report.num_rows == 3
    with pytest.raises(ValueError, match="only apply to mix='interleave'"):
        load_mixture(specs, "chat", probabilities=[0.5, 0.5])


def test_interleave_round_robin_and_all_exhausted(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [qa(i) for i in range(3)])
    b = write_jsonl(tmp_path / "b.jsonl", [qa(i) for i in range(10, 12)])
    specs = [DatasetSpec(a), DatasetSpec(b)]
    rows, report = load_mixture(specs, "chat", mix="interleave")
    assert [r.messages[0]["content"] for r, _ in rows] == ["q0", "q10", "q1", "q11"]
    assert report.num_rows == 4 and report.num_kept == 5
    rows, _ = load_mixture(specs, "chat", mix="interleave", stopping_strategy="all_exhausted")
    assert [r.messages[0]["content"] for r, _ in rows] == ["q0", "q10", "q1", "q11", "q2"]


def test_interleave_probabilities_are_seeded(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [qa(i) for i in range(400)])
    b = write_jsonl(tmp_path / "b.jsonl", [qa(i) for i in range(400)])
    specs = [DatasetSpec(a), DatasetSpec(b)]
    rows, _ = load_mixture(specs, "chat", mix="interleave", probabilities=[0.8, 0.2], seed=3)
    sources = Counter(p.source for _, p in rows)
    assert sources[a] == 400 and 60 < sources[b] < 140
    again, _ = load_mixture(specs, "chat", mix="interleave", probabilities=[0.8, 0.2], seed=3)
    assert [p for _, p in again] == [p for _, p in rows]
    with pytest.raises(ValueError, match="2 non-negative weights"):
        load_mixture(specs, "chat", mix="interleave", probabilities=[1.0])
    only_a, _ = load_mixture(
        specs, "chat", mix="interleave", probabilities=[1, 0], stopping_strategy="all_exhausted"
    )
    assert {p.source for _, p in only_a} == {a} and len(only_a) == 400


def test_split_validation_is_deterministic():
    rows = list(range(100))
    train, val = split_validation(rows, 0.1, seed=0)
    assert len(val) == 10 and sorted(train + val) == rows
    assert train == sorted(train) and val == sorted(val)
    assert (train, val) == split_validation(rows, 0.1, seed=0)
    assert val != split_validation(rows, 0.1, seed=1)[1]
    assert split_validation(rows, 0.0) == (rows, [])
    assert len(split_validation(rows[:3], 0.01)[1]) == 1
    with pytest.raises(ValueError, match="leaves no training rows"):
        split_validation(rows[:1], 0.5)
    with pytest.raises(ValueError, match=r"val_split must be in \[0, 1\)"):
        split_validation(rows, 1.0)


def test_streaming_is_lazy_and_raises_at_the_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [qa(0), qa(1), "{bad", qa(3)])
    it = iter_raw(DatasetSpec(path))
    assert [next(it).line, next(it).line] == [1, 2]
    with pytest.raises(ValueError, match=rf"{path}:3: invalid JSON"):
        next(it)
    report = LoadReport()
    assert [r.line for r in iter_raw(DatasetSpec(path), "skip", report)] == [1, 2, 4]
    assert report.skipped == Counter(bad_json=1)
    assert [r.line for r in iter_raw(DatasetSpec(f"{path}#1"))] == [1]


def test_streaming_csv_and_canonical(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("query,response\nq0,r0\nq1,\nq2,r2\n")
    it = iter_canonical(DatasetSpec(str(path)), "chat")
    assert next(it)[1] == Provenance(str(path), 2)
    with pytest.raises(ValueError, match=r"a.csv:3: assistant turn at position 1 is empty"):
        next(it)
    report = LoadReport()
    rows = list(iter_canonical(DatasetSpec(str(path)), "chat", "skip", report))
    assert [p.line for _, p in rows] == [2, 4] and report.skipped == Counter(empty_answer=1)
    assert report.summary().startswith("kept 2 of 3 rows (kind 'chat'); skipped 1: empty_answer 1")


def test_streaming_memory_stays_flat(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": "x" * 500 + str(i)} for i in range(4000)])  # ~2 MB
    tracemalloc.start()
    num_rows = sum(1 for _ in iter_canonical(DatasetSpec(path), "text"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert num_rows == 4000 and peak < 200_000
