"""Fast checks of the benchmark tooling: lit_cmd.sh's command lines, run_lit.py's summariser, the bench configs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from lit_swift.cli import run_trainer

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def _run_lit():
    spec = importlib.util.spec_from_file_location("run_lit", BENCH / "run_lit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run(extra_args: str = "", **bench) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "LIT_"))}
    env.update(
        LIT_EXTRA_ARGS=extra_args,
        LIT_DRY_RUN="1",
        LIT_PY="python",
        BENCH_MODEL="/m",
        BENCH_DATA="/d.jsonl",
        BENCH_RUN_DIR="/r",
    )
    env.update({f"BENCH_{k.upper()}": str(v) for k, v in bench.items()})
    proc = subprocess.run(["bash", str(BENCH / "lit_cmd.sh")], env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def flags(out: str) -> dict[str, str]:
    words = out.split()
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def test_sft_pad_fp32_maps_every_variable():
    rc, out = dry_run(
        task="sft",
        mode="pad",
        precision="fp32",
        bs=4,
        steps=10,
        max_len=1024,
        lr="1e-3",
        seed=42,
        lora_r=8,
        lora_alpha=32,
        lora_dropout=0.05,
    )
    assert rc == 0, out
    f = flags(out)
    assert out.startswith("python -m lit_swift fit ") and f["--config"] == f"{REPO}/bench/configs/sft.yaml"
    assert f["--model.init_args.model"] == "/m" and f["--data.init_args.dataset"] == "/d.jsonl"
    assert f["--model.init_args.dtype"] == "float32" and f["--trainer.precision"] == "32-true"
    assert f["--data.init_args.packing"] == "false" and f["--data.init_args.batch_size"] == "4"
    assert f["--trainer.max_steps"] == "10" and f["--trainer.default_root_dir"] == "/r"
    assert f["--model.init_args.optimizer.init_args.lr"] == "1e-3" and f["--seed_everything"] == "42"
    assert (
        f["--model.init_args.tuner.init_args.r"] == "8"
        and f["--model.init_args.tuner.init_args.alpha"] == "32"
    )
    assert f["--model.init_args.tuner.init_args.dropout"] == "0.05"
    assert f["--data.init_args.max_length"] == "1024"


@pytest.mark.parametrize(
    ("precision", "dtype", "trainer_precision"),
    [("fp32", "float32", "32-true"), ("amp", "float32", "bf16-mixed"), ("bf16", "bfloat16", "bf16-mixed")],
)
def test_precisions(precision, dtype, trainer_precision):
    rc, out = dry_run(task="sft", mode="pad", precision=precision)
    f = flags(out)
    assert rc == 0 and f["--model.init_args.dtype"] == dtype and f["--trainer.precision"] == trainer_precision


@pytest.mark.parametrize(
    ("mode", "bs", "rows"), [("pack", 1, "1"), ("pack", 2, "2"), ("padfree", 4, "1"), ("padfree", 8, "2")]
)
def test_packed_modes(mode, bs, rows):
    """padfree packs rows of max_length, as many as hold about bs mean-length (193-token) samples."""
    rc, out = dry_run(task="sft", mode=mode, bs=bs, max_len=1024)
    f = flags(out)
    assert rc == 0 and f["--data.init_args.packing"] == "true" and f["--data.init_args.batch_size"] == rows


def test_dpo_and_extra_args():
    rc, out = dry_run(task="dpo", mode="", precision="amp", bs=4, dpo_beta=0.1, lr="1e-4")
    f = flags(out)
    assert rc == 0 and f["--config"].endswith("bench/configs/dpo.yaml")
    assert f["--model.init_args.loss.init_args.beta"] == "0.1" and "--data.init_args.packing" not in f
    rc, out = dry_run(task="sft", extra_args='--model.init_args.config_overrides {"num_hidden_layers":2}')
    assert rc == 0 and out.rstrip().endswith(
        '--model.init_args.config_overrides \\{\\"num_hidden_layers\\":2\\}'
    )


@pytest.mark.parametrize("bad", [{"precision": "fp16"}, {"mode": "stream"}, {"task": "grpo"}])
def test_bad_values_fail(bad):
    rc, out = dry_run(**{"task": "sft", "mode": "pad", **bad})
    assert rc == 2 and "lit_cmd.sh: bad" in out


@pytest.mark.parametrize("task", ["sft", "dpo", "kto", "rm"])
def test_bench_configs_instantiate(task, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cli = run_trainer(
        ["--config", str(BENCH / "configs" / f"{task}.yaml"), "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )
    assert cli.trainer.max_steps > 0 and not cli.trainer.checkpoint_callbacks
    assert cli.model.schedule.warmup_ratio == 0.0


PROBE = {
    "t_proc_start": 100.0,
    "t_first_train_fwd": 104.0,
    "nograd_tokens": 0,
    "tree_peak_rss_mb": 1024.0,
    "precision": {"embedding_dtype": "float32", "autocast": "off", "optimizer_param_dtypes": ["float32"]},
    "steps": [
        {"total": 400, "nonpad": 300, "max_rows": 4, "max_len": 100, "t": 106.0},
        {"total": 400, "nonpad": 200, "max_rows": 4, "max_len": 100, "t": 107.0},
        {"total": 400, "nonpad": 300, "max_rows": 4, "max_len": 100, "t": 108.0},
    ],
    "logs": [{"loss": 3.0}, {"loss": 2.0}, {"loss": 1.0}],
}


def test_summarise_literal_probe_record():
    """800 non-pad of 1200 slots; loop 104 -> 108 s = 4 s: 200 tok/s; steady: 500 tokens in 2 s = 250 tok/s.

    FLOPs: 4 * 1e6 linear params * 800 tokens = 3.2 GFLOP, + head 4 * 10 * 100 * 50 targets = 2e5;
    3.2002 GFLOP / 4 s = 0.80005 GFLOP/s against a 8 GFLOP/s fp32 peak: MFU 10.0%.
    """
    run_lit = _run_lit()
    shape = {"linear_params": 1_000_000, "hidden": 10, "vocab": 100}
    peak = {"fp32_gflops": 8.0, "bf16_gflops": 1.0}
    s = run_lit.summarise(PROBE, shape, peak, "fp32", tree_peak_mb=2048.0, target_tokens=50)
    assert s["n_steps"] == 3 and s["tokens_nonpad"] == 800
    assert s["pad_frac"] == pytest.approx(1 / 3) and s["nonpad_tok_per_s"] == pytest.approx(200.0)
    assert s["steady_nonpad_tok_per_s"] == pytest.approx(250.0) and s["steady_s_per_step"] == pytest.approx(
        1.0
    )
    assert s["startup_to_first_fwd_s"] == pytest.approx(4.0) and s[
        "startup_to_first_step_s"
    ] == pytest.approx(6.0)
    assert s["mfu"] == pytest.approx(0.80005 / 8.0)
    assert s["final_loss"] == 1.0 and s["mean_loss"] == pytest.approx(2.0) and s["peak_rss_gb"] == 2.0
    assert run_lit.summarise(PROBE, shape, peak, "bf16")["mfu"] == pytest.approx(0.8 / 1.0)
    assert run_lit.summarise({}, shape, peak, "fp32") == {"n_steps": 0, "precision_seen": None}


def test_markdown_table_and_model_shape(tmp_path):
    run_lit = _run_lit()
    (tmp_path / "config.json").write_text(
        '{"hidden_size": 576, "intermediate_size": 1536, "vocab_size": 49152, "num_attention_heads": 9,'
        ' "num_key_value_heads": 3, "num_hidden_layers": 30}'
    )
    shape = run_lit.model_shape(str(tmp_path))
    assert shape["linear_params"] == 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536)  # 106.2 M
    assert run_lit.model_shape(str(tmp_path), layers=2)["layers"] == 2
    host = {
        "cpu": "X",
        "cores": 2,
        "loadavg": (1.0, 1.0, 1.0),
        "native_bf16": False,
        "flags": {"avx512_bf16": False, "amx_bf16": False},
    }
    summary = run_lit.summarise(PROBE, shape, {"fp32_gflops": 80.0}, "fp32")
    md = run_lit.markdown(
        {
            "config": "lit-sft-pad-fp32",
            "summary": summary,
            "host": host,
            "peak": {"fp32_gflops": 80.0, "bf16_gflops": 10.0},
        }
    )
    assert "| lit-sft-pad-fp32 | 200.0 | 250.0 | 33.3% |" in md and "EMULATED" in md


def test_harness_mfu_reads_every_probe(tmp_path, monkeypatch, capsys):
    """One FLOP count for every tool: 4 * 1e6 * 800 tokens = 3.2 GFLOP in 4 s against 8 GFLOP/s: 10 %."""
    import json

    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("harness_mfu", BENCH / "harness_mfu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "matmul_peak", lambda n: {"fp32_gflops": 8.0, "bf16_gflops": 1.0})
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 10,
                "intermediate_size": 20,
                "num_hidden_layers": 1,
                "num_attention_heads": 1,
                "num_key_value_heads": 1,
                "vocab_size": 100,
            }
        )
    )
    (tmp_path / "metrics").mkdir()
    for label in ("trl-sft-pack-r1", "lit-sft-pack-bf16-r1"):
        (tmp_path / "metrics" / f"{label}-1.json").write_text(json.dumps({**PROBE, "label": label}))
    assert module.main([str(tmp_path), "--model", str(model)]) == 0
    out = capsys.readouterr().out
    linear = module.model_shape(str(model))["linear_params"]
    assert f"| trl-sft-pack-r1 | {4 * linear * 800 / 4 / 1e9 / 8.0:.1%} |" in out
    assert f"| lit-sft-pack-bf16-r1 | {4 * linear * 800 / 4 / 1e9 / 1.0:.1%} |" in out  # bf16 peak
