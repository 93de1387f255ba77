"""`lit_swift.preflight`: config, data and model path errors before torch/Lightning are imported."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_swift import preflight

ROOT = Path(__file__).resolve().parent.parent


def problems(args: list[str]) -> str:
    with pytest.raises(ValueError) as err:
        preflight.check(args)
    return str(err.value)


def test_shipped_configs_pass(monkeypatch):
    monkeypatch.chdir(ROOT)
    for path in ["configs/sft/lora.yaml", "configs/dpo/lora.yaml", "configs/quickstart.yaml"]:
        preflight.check(["--config", path])


def test_missing_config_and_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: 1\n data: [\n")
    text = problems(["--config", str(tmp_path / "nope.yaml"), f"--config={bad}"])
    assert f"--config {tmp_path / 'nope.yaml'}: no such file" in text
    assert f"{bad}:3: invalid YAML" in text


def test_every_data_and_model_problem_is_listed_once(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": []}\nnot json\n\n[1, 2]\n')
    text = problems([
        "--config", "configs/sft/lora.yaml",
        "--data.init_args.dataset", str(rows),
        "--data.init_args.val_dataset=[missing/val.jsonl]",
        "--model.init_args.model", "./no/such/model",
    ])  # fmt: skip
    assert f"data.init_args.dataset: {rows}:2: invalid JSON" in text
    assert f"data.init_args.dataset: {rows}:4: expected a JSON object, got list" in text
    assert "data.init_args.val_dataset: missing/val.jsonl: no such file" in text
    assert "model.init_args.model ./no/such/model: no such folder" in text
    assert text.count("\n") == 3  # the four problems, one line each


def test_row_count_suffix_and_model_folder_without_config(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    preflight.check(
        ["--config", "configs/debug/sft.yaml", "--data.dataset", "data/quickstart/identity.jsonl#3"]
    )
    text = problems(["--config", "configs/debug/sft.yaml", "--model.init_args.model", str(tmp_path)])
    assert "folder has no config.json" in text


def test_help_and_print_config_are_left_to_the_parser():
    preflight.check(["--config", "missing.yaml", "--print_config"])
    preflight.check(["--help"])


def test_later_config_overrides_earlier():
    base = {"data": {"init_args": {"dataset": "a.jsonl", "max_length": 8}}}
    assert preflight.merge(base, {"data": {"init_args": {"dataset": "b.jsonl"}}}) == {
        "data": {"init_args": {"dataset": "b.jsonl", "max_length": 8}}
    }


def test_cli_error_comes_before_heavy_imports(tmp_path):
    """`python -m lit_swift fit` with a bad data path exits 2 with the problem, without importing torch."""
    config = tmp_path / "run.yaml"
    config.write_text((ROOT / "configs/debug/sft.yaml").read_text().replace("identity.jsonl#8", "nope.jsonl"))
    code = (
        "import sys; from lit_swift import preflight\n"
        "try:\n    preflight.main(sys.argv[1:])\n"
        "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, "fit", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert out.stdout.strip() == "exit 2 False False", out.stderr
    assert out.stderr.startswith("error: data.init_args.dataset: ")
    assert "data/quickstart/nope.jsonl: no such file" in out.stderr
    assert elapsed < 10  # < 1 s on a quiet host; generous for a loaded CI machine
