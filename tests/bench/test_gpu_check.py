"""`bench/gpu_check.sh --dry-run` on CPU: syntax, imports, arguments, tokenizer, generated data, model size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_checks_imports_arguments_and_data(tmp_path, smollm2_dir):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_ASSETS": str(tmp_path / "no-assets")}
    env["LIT_SWIFT_CACHE"] = str(Path(smollm2_dir).parents[1])  # the tokenizer of the materialised alias
    proc = subprocess.run(
        ["bash", str(REPO / "bench/gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out"), "--steps", "3",
         "--warmup", "1", "--rows", "2", "--max-length", "512"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "torch " in out and "lightning " in out and "cuda " in out  # the import check ran first
    assert "model: 1.04 B parameters (14 layers x 2048)" in out
    assert "runs: lora, full;" in out and "dry run:" in out
    rows = [json.loads(line) for line in (tmp_path / "out/data.jsonl").open()]
    assert len(rows) == 2 * (3 + 2) * 4 and [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]


def test_bad_arguments_fail_before_any_work(tmp_path):
    script = str(REPO / "bench/gpu_check.py")
    for args, message in [
        (["--runs", "lora,qlora"], "expected a comma list of lora, full"),
        (["--steps", "3", "--warmup", "3"], "must be below --steps"),
        (["--tokenizer", str(tmp_path)], "no tokenizer.json there"),
    ]:
        argv = [
            sys.executable,
            script,
            *(["--tokenizer", str(REPO)] if "--tokenizer" not in args else []),
            *args,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path, smollm2_dir):
    """`--cpu-smoke` on a tiny model: model folder, peak, packed == padded loss, LoRA and full training, table."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench/gpu_check.py"), "--tokenizer", smollm2_dir, "--cpu-smoke",
         "--layers", "2", "--hidden", "128", "--intermediate", "256", "--heads", "4", "--kv-heads", "2",
         "--max-length", "256", "--rows", "2", "--steps", "3", "--warmup", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| lora |" in proc.stdout and "| full |" in proc.stdout
    assert "packed == padded loss: PASS" in proc.stdout
    assert (tmp_path / "results.json").exists()
