#!/usr/bin/env python
"""Profile a few lit-swift SFT or DPO steps on the bench data with torch.profiler; print the top ops by self CPU time.

HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_step.py --model /tmp/benchmodel --layers 2 --steps 3
HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_step.py --model /tmp/benchmodel --task dpo --mode pack --steps 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import lightning as L
from torch.profiler import ProfilerActivity, profile, record_function

from lit_swift.cli import run_trainer

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("BENCH_DIR", "/work/shared/bench")) / "data"


class ProfileSteps(L.Callback):
    """Profiles training batches `skip` .. `skip + steps - 1` (the first ones are warm-up) and keeps the result."""

    def __init__(self, skip: int, steps: int):
        self.skip, self.steps, self.prof, self.times = skip, steps, None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.skip:
            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
            self.prof.__enter__()
        self._t = time.perf_counter()
        self._step = record_function(f"step_{batch_idx}")
        self._step.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._step.__exit__(None, None, None)
        self.times.append((batch_idx, time.perf_counter() - self._t, int(batch["input_ids"].numel())))
        if self.prof is not None and batch_idx == self.skip + self.steps - 1:
            self.prof.__exit__(None, None, None)
            trainer.should_stop = True


def cli_args(a: argparse.Namespace) -> list[str]:
    m, d = "--model.init_args", "--data.init_args"
    args = [
        "--config",
        str(HERE / "configs" / f"{a.task}.yaml"),
        f"{m}.model",
        a.model,
        f"{d}.dataset",
        a.data or f"{DATA / a.task}.jsonl#64",
        f"{d}.batch_size",
        str(a.bs),
        f"{d}.packing",
        str(a.mode == "pack").lower(),
        "--trainer.max_steps",
        str(a.skip + a.steps),
        "--trainer.default_root_dir",
        a.out,
        "--trainer.logger",
        "false",
    ]
    if a.precision != "fp32":
        args += [
            "--trainer.precision",
            "bf16-mixed",
            f"{m}.dtype",
            "bfloat16" if a.precision == "bf16" else "float32",
        ]
    if a.layers:
        args += [f"{m}.config_overrides", f'{{"num_hidden_layers": {a.layers}}}']
    return args


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--task", choices=("sft", "dpo"), default="sft")
    p.add_argument("--data", default=None, help="default: the bench's <task>.jsonl, first 64 rows")
    p.add_argument("--mode", choices=("pad", "pack"), default="pad")
    p.add_argument("--precision", choices=("fp32", "amp", "bf16"), default="fp32")
    p.add_argument("--bs", type=int, default=4)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--skip", type=int, default=1, help="warm-up steps not profiled")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default="runs/bench/profile")
    a = p.parse_args(argv)
    cli = run_trainer(cli_args(a), run=False)
    cb = ProfileSteps(a.skip, a.steps)
    cli.trainer.callbacks.append(cb)
    cli.trainer.fit(cli.model, cli.datamodule)
    for idx, took, slots in cb.times:
        print(f"step {idx}: {took:.2f} s, {slots} token slots")
    table = cb.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top)
    print(table)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "profile.txt").write_text(table)


if __name__ == "__main__":
    sys.exit(main())
