#!/usr/bin/env python
"""MFU of every run in a `run_peers.sh` output folder (peers and lit-swift alike), from the probe JSONs.

    .venv/bin/python bench/harness_mfu.py ~/.cache/lit-swift-bench/out/run-XXXX --model MODEL_DIR

Same FLOP count for every tool (`run_lit.summarise`): 4N per non-pad trained token + 2N per no-grad
token (a DPO reference), N = the model's linear-layer parameters; the LM head and attention scores are
left out for all, since the peers' target-token counts are not in their probe records. The
denominator is this host's matmul peak, measured here (`run_lit.matmul_peak`) right after the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_lit import matmul_peak, model_shape, summarise  # noqa: E402


def precision_of(config: str) -> str:
    return next((p for p in ("amp", "bf16") if config.endswith("-" + p)), "fp32")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="run_peers.sh output folder (holds metrics/)")
    p.add_argument("--model", required=True)
    a = p.parse_args(argv)
    peak, shape = matmul_peak(2048), model_shape(a.model)
    rows = []
    for f in sorted(Path(a.out, "metrics").glob("*.json")):
        probe = json.loads(f.read_text())
        config = probe.get("label") or f.stem
        s = summarise(probe, shape, peak, precision_of(config.rsplit("-r", 1)[0]))
        rows.append((config, s.get("mfu"), s.get("nonpad_tok_per_s"), s.get("model_gflop")))
    print(f"matmul peak: fp32 {peak['fp32_gflops']:.1f}, bf16 {peak['bf16_gflops']:.1f} GFLOP/s")
    print("| run | MFU | non-pad tok/s | model GFLOP |\n|---|---|---|---|")
    for config, mfu, tps, gf in rows:
        print(f"| {config} | {mfu or 0:.1%} | {tps or 0:.1f} | {gf or 0:.0f} |")
    (Path(a.out) / "mfu.json").write_text(json.dumps({"peak": peak, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
