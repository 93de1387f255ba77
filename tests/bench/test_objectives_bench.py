"""KTO and reward-model bench jobs: the KTO rows derived from DPO pairs, lit_cmd.sh's kto/rm command lines, and
run_objectives.sh's commands for every tool (dry run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def test_kto_rows_from_a_pair(tmp_path):
    spec = importlib.util.spec_from_file_location("kto_data", BENCH / "kto_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pair = {
        "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "rejected_response": "5",
    }
    src, dst = tmp_path / "dpo.jsonl", tmp_path / "out/kto.jsonl"
    src.write_text(json.dumps(pair) + "\n\n")
    assert module.convert(str(src), str(dst)) == 2
    rows = [json.loads(line) for line in dst.open()]
    assert rows == [
        {
            "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
            "label": True,
        },
        {
            "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
            "label": False,
        },
    ]


def lit_cmd(task: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "LIT_"))}
    env.update(LIT_DRY_RUN="1", LIT_PY="python", BENCH_TASK=task, BENCH_MODEL="/m", BENCH_DATA="/d.jsonl",
               BENCH_RUN_DIR="/r", BENCH_BS="4", BENCH_DPO_BETA="0.2")  # fmt: skip
    proc = subprocess.run(["bash", str(BENCH / "lit_cmd.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_lit_cmd_kto_and_rm():
    kto, rm = lit_cmd("kto"), lit_cmd("rm")
    assert (
        f"--config {REPO}/bench/configs/kto.yaml" in kto
        and "--model.init_args.loss.init_args.beta 0.2" in kto
    )
    assert f"--config {REPO}/bench/configs/rm.yaml" in rm and "loss.init_args.beta" not in rm
    assert "--data.init_args.batch_size 4" in kto and "--data.init_args.batch_size 4" in rm


def test_run_objectives_dry_run_lists_every_tool(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "BENCH_MODEL": "/m", "STEPS": "3"}
    proc = subprocess.run(["bash", str(BENCH / "run_objectives.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert list(lines) == ["swift-kto", "trl-kto", "lit-kto", "swift-rm", "trl-rm", "lit-rm"]
    assert (
        "rlhf --rlhf_type kto --beta 0.1" in lines["swift-kto"]
        and f"--dataset {tmp_path}/data/kto.jsonl" in lines["swift-kto"]
    )
    assert "rlhf --rlhf_type rm" in lines["swift-rm"] and "--max_steps 3" in lines["swift-rm"]
    assert "peers/trl_kto.py" in lines["trl-kto"] and "peers/trl_rm.py" in lines["trl-rm"]
    assert "BENCH_TASK=kto" in lines["lit-kto"] and "BENCH_TASK=rm" in lines["lit-rm"]
    assert sum(1 for _ in (tmp_path / "data/kto.jsonl").open()) == 800  # 400 shared pairs -> 800 rows
    bad = subprocess.run(
        ["bash", str(BENCH / "run_objectives.sh"), "lit-grpo"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown config lit-grpo" in bad.stderr
