"""User errors end in one `error: where: what (fix)` line and exit 2, never a traceback or a half-made run
folder; no run trains on zero rows (issue 13, items 2 and 3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonargparse import ArgumentError

from lit_swift.cli import DEBUG_ENV, main
from lit_swift.data.datamodule import SFTDataModule

ROOT = Path(__file__).resolve().parents[1]
DEBUG_SFT = str(ROOT / "configs/debug/sft.yaml")
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def fail(capsys, args: list[str]) -> str:
    """Run `lit-swift ARGS`, expect exit 2, and return its only stderr line."""
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def fit(data: str, root: Path, *more: str) -> list[str]:
    return [
        "fit",
        "--config",
        DEBUG_SFT,
        "--data.init_args.dataset",
        data,
        "--trainer.default_root_dir",
        str(root),
        *more,
    ]


def test_bad_row_is_one_line_with_the_json_column_and_leaves_no_run_folder(tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT)[:-1] + "\n")  # line 2 lacks its last brace
    line = fail(capsys, fit(str(data), tmp_path / "run"))
    assert line.startswith(
        f"error: {data}:2: invalid JSON at column {len(json.dumps(CHAT))}: Expecting ',' delimiter (fix the row"
    )
    assert "on_bad_row: skip" in line
    assert not (tmp_path / "run").exists()  # no empty lightning_logs/version_0, no config.yaml


def test_empty_training_file_stops_instead_of_training_on_nothing(tmp_path, capsys):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    line = fail(capsys, fit(str(data), tmp_path / "run"))
    assert (
        line
        == f"error: {data}: no training rows of kind 'chat': read 0, kept 0 (the file has no rows; give a file that has some)"
    )
    assert not (tmp_path / "run").exists()


def test_skip_keeping_no_row_and_hash_zero_are_errors(tmp_path, smollm2_dir):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"foo": 1}\n{"query": "q"}\n')
    dm = SFTDataModule(smollm2_dir, str(data), on_bad_row="skip", encode_cache=False)
    with pytest.raises(ValueError) as info:
        dm.setup("fit")
    assert str(info.value).startswith(
        f"{data}: no training rows of kind 'chat': read 2, kept 0 (no_format 1, no_answer 1)"
    )
    assert f"e.g. {data}:" in str(info.value)
    with pytest.raises(
        ValueError,
        match=r"qa.jsonl#0: num_rows must be positive, got 0, so there would be nothing to train on \(take N >= 1",
    ):
        SFTDataModule(smollm2_dir, f"{data}#0", encode_cache=False).setup("fit")


def test_length_policy_dropping_every_row_is_an_error(tmp_path, smollm2_dir):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(CHAT) + "\n")
    dm = SFTDataModule(smollm2_dir, str(data), max_length=4, truncation="drop", encode_cache=False)
    dm.setup("fit")
    with pytest.raises(ValueError, match="no training sample is left after encoding"):
        dm.train_dataloader()


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            ["--data.init_args.bogus", "3"],
            "error: --data.init_args.bogus (command line): SFTDataModule: Option 'bogus' is not accepted",
        ),
        (["--data.init_args.max_length", "abc"], "max_length: expected int, got 'abc'"),
        (["--config", "missing.yaml"], "File does not exist"),
    ],
)
def test_bad_options_are_one_line(capsys, option, expected):
    line = fail(capsys, ["fit", "--config", DEBUG_SFT, *option])
    assert expected in line and line.endswith("(see `lit-swift fit --help` or --print_config)")


def test_bad_yaml_key_names_the_file_and_line(tmp_path, capsys):
    extra = tmp_path / "extra.yaml"
    extra.write_text("trainer:\n  max_stepz: 3\n")
    line = fail(capsys, ["fit", "--config", DEBUG_SFT, "--config", str(extra)])
    assert line.startswith(f"error: {extra}:2: ") and "trainer.max_stepz" in line


def test_unknown_model_alias_and_missing_files(tmp_path, capsys):
    line = fail(capsys, ["fit", "--config", DEBUG_SFT, "--model.init_args.model", "no-such-model"])
    assert "is not a built-in alias, not a local folder" in line and "smollm2-135m-instruct" in line
    line = fail(capsys, ["data", "preview", "--model", "smollm2-135m-instruct", "--dataset", "nothere.jsonl"])
    assert line.startswith("error: nothere.jsonl: no such file (relative paths start at ")
    line = fail(capsys, ["export", "runs/x/last.ckpt"])  # tool commands take --flag value only
    assert "unrecognized arguments: runs/x/last.ckpt; options are given as `--name value`" in line


def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    with pytest.raises(ArgumentError):
        main(["fit", "--config", DEBUG_SFT, "--data.init_args.bogus", "3", "--debug"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ArgumentError):
        main(["fit", "--config", DEBUG_SFT, "--data.init_args.bogus", "3"])


def test_streaming_an_empty_or_all_bad_file_is_an_error(tmp_path, smollm2_dir):
    """Before: an empty stream under max_steps restarted its empty pass forever."""
    empty, bad = tmp_path / "empty.jsonl", tmp_path / "bad.jsonl"
    empty.write_text("")
    bad.write_text('{"foo": 1}\n')
    for path, expected in (
        (empty, "read 0, kept 0"),
        (bad, f"read 1, kept 0 (no_format 1); e.g. {bad}:1: row has"),
    ):
        dm = SFTDataModule(smollm2_dir, str(path), streaming=True, on_bad_row="skip")
        dm.setup("fit")
        with pytest.raises(
            ValueError, match=re.escape(f"{path}: no training rows of kind 'chat' in the stream: {expected}")
        ):
            next(iter(dm.train_dataloader()))


def test_a_failed_start_keeps_an_existing_root_and_other_runs(tmp_path, capsys):
    root = tmp_path / "run"
    (root / "lightning_logs" / "version_0").mkdir(parents=True)
    (root / "lightning_logs" / "version_0" / "metrics.csv").write_text("step\n")
    (root / "notes.txt").write_text("mine")
    fail(capsys, fit(str(tmp_path / "missing.jsonl"), root))
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "lightning_logs",
        "lightning_logs/version_0",
        "lightning_logs/version_0/metrics.csv",
        "notes.txt",
    ]
