"""`precision: auto` resolves by the host's bf16 support; shipped SFT/DPO configs default to it and to packing."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pytest
import yaml

from lit_swift import precision
from lit_swift.cli import main, run_trainer

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted([*(ROOT / "configs/sft").glob("*.yaml"), *(ROOT / "configs/dpo").glob("*.yaml")])


@pytest.fixture
def host(monkeypatch):
    """Set the host's CPU flags and CUDA state: `host(flags=..., cuda=None | (native_bf16, name))`."""

    def set_host(flags=(), cuda=None):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: cuda is not None)
        monkeypatch.setattr(precision, "cuda_bf16", lambda: cuda)

    return set_host


@pytest.mark.parametrize(
    ("flags", "cuda", "accelerator", "expected"),
    [
        (("avx2", "fma"), None, "auto", "32-true"),  # AVX2-only CPU: bf16 emulated
        (("avx2", "avx512f", "avx512_bf16"), None, "auto", "bf16-mixed"),  # Zen 4/5, Cooper Lake
        (("avx2", "amx_tile", "amx_bf16"), None, "cpu", "bf16-mixed"),  # Sapphire Rapids and later
        (("avx2",), (True, "NVIDIA H200"), "auto", "bf16-mixed"),
        (("avx2",), (True, "NVIDIA H200"), "gpu", "bf16-mixed"),
        (("avx2",), (False, "Tesla V100"), "cuda", "32-true"),  # pre-Ampere: no native bf16
        (("amx_bf16",), (False, "Tesla V100"), "cpu", "bf16-mixed"),  # the CPU is asked for, not the GPU
        (("avx2",), (True, "NVIDIA H200"), "cpu", "32-true"),
        (("amx_bf16",), None, "mps", "32-true"),
    ],
)
def test_auto_resolves_by_host(host, flags, cuda, accelerator, expected):
    host(flags, cuda)
    chosen, reason = precision.resolve("auto", accelerator)
    assert chosen == expected and reason


def test_auto_reason_names_the_deciding_fact(host):
    host(("avx2", "fma"))
    assert "without amx_bf16/avx512_bf16" in precision.resolve("auto", "auto")[1]
    host(("amx_bf16", "avx512_bf16"))
    assert precision.resolve("auto", "cpu") == (
        "bf16-mixed",
        "CPU with amx_bf16/avx512_bf16: native bf16 matmuls",
    )
    host((), (True, "NVIDIA H200"))
    assert precision.resolve("auto", "auto") == ("bf16-mixed", "CUDA device NVIDIA H200 runs bf16 natively")


@pytest.mark.parametrize("given", ["32-true", "bf16-mixed", "bf16-true", 32, None])
def test_explicit_precision_is_untouched(host, given):
    host(("amx_bf16",))
    assert precision.resolve(given, "cpu") == (given, None)


def test_cpu_flags_reads_this_host():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    if Path("/proc/cpuinfo").exists():
        assert flags  # every Linux x86/arm host lists some flags


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_sft_and_dpo_configs_default_to_the_fast_path(path):
    config = yaml.safe_load(path.read_text())
    assert config["trainer"]["precision"] == "auto"
    assert config["data"]["init_args"]["packing"] is True


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(("avx2",), "32-true"), (("avx512_bf16",), "bf16-mixed")],
    ids=["avx2", "avx512_bf16"],
)
@pytest.mark.parametrize("name", ["sft/lora.yaml", "dpo/lora.yaml"])
def test_shipped_config_resolves_on_mocked_host(host, monkeypatch, tmp_path, caplog, name, flags, expected):
    """The Trainer a shipped config builds uses the host's fast precision and says why, once."""
    host(flags)
    caplog.set_level(logging.INFO)
    monkeypatch.chdir(ROOT)
    cli = run_trainer(["--config", f"configs/{name}", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert isinstance(cli.trainer, precision.Trainer)
    assert cli.trainer.precision == expected
    assert cli.datamodule.packing is True
    assert caplog.text.count(f"precision: auto -> {expected} (") == 1


def test_fit_with_auto_precision_and_packing_end_to_end(host, tmp_path, caplog):
    """`lit-swift fit` on the debug SFT twin with the shipped defaults (packing, precision auto) trains."""
    host(("avx2", "fma"))
    caplog.set_level(logging.INFO)
    main([
        "fit", "--config", str(ROOT / "configs/debug/sft.yaml"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.precision", "auto", "--trainer.max_steps", "2",
        "--model.init_args.config_overrides", '{"num_hidden_layers": 1}',
        "--data.init_args.dataset", str(ROOT / "data/quickstart/identity.jsonl#8"),
        "--data.init_args.packing", "true", "--data.init_args.max_length", "128", "--data.init_args.batch_size", "1",
    ])  # fmt: skip
    assert "precision: auto -> 32-true (CPU without amx_bf16/avx512_bf16" in caplog.text
    run = next(tmp_path.glob("lightning_logs/version_*"))
    losses = [float(r["train/loss"]) for r in csv.DictReader((run / "metrics.csv").open()) if r["train/loss"]]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "auto"
