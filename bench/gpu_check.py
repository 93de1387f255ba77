"""One-GPU check of lit-swift's packed bf16 training path (run through `bench/gpu_check.sh`).

A SmolLM2-architecture model (Llama blocks, tied embeddings, the SmolLM2 tokenizer) scaled to ~1B
parameters with random weights is written to a scratch folder; generated chat rows are packed into
rows of `--max-length`; LoRA and full fine-tuning each train `--steps` steps in `bf16-mixed` through
the real objective, DataModule and `sdpa_varlen` (one FlexAttention or flash-attn varlen call per
layer on CUDA), with and without Liger kernels when liger-kernel is importable. Printed per run:
non-pad tokens/s after `--warmup` steps, MFU against the bf16 matmul peak measured first, peak GPU
memory; and once: the loss of the same samples packed vs one per padded row (fp32 and bf16 autocast).

MFU counts model matmul FLOPs only: 6·N per trained token for full fine-tuning, 4·N with LoRA (frozen
weights: forward and input gradient), N = decoder linear weights + the LM head; attention scores and
the rank-r adapters are left out, as in bench/README.md. `--dry-run` (CPU is enough) checks the
imports, the arguments, the tokenizer, the generated data and the model size, and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch

DEVICE = "cuda"
"""`--cpu-smoke` sets "cpu": the whole check on a tiny model, to test the script itself without a GPU."""
HEADER = ("run", "tok/s", "MFU %", "peak GB", "loss first->last", "s/step")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="folder with the SmolLM2 tokenizer files")
    p.add_argument("--out", default="runs/gpu_check", help="scratch folder (model, data, results.json)")
    p.add_argument("--runs", default="lora,full", help="comma list of lora, full")
    p.add_argument(
        "--liger", choices=("auto", "on", "off"), default="auto", help="auto: also with Liger if importable"
    )
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--warmup", type=int, default=4, help="steps left out of tokens/s (compile, allocator)")
    p.add_argument("--max-length", type=int, default=4096, help="packed row length")
    p.add_argument("--rows", type=int, default=4, help="packed rows per step")
    p.add_argument("--layers", type=int, default=14)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=8192)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dry-run", action="store_true", help="check imports, arguments, tokenizer and data; no training"
    )
    p.add_argument(
        "--cpu-smoke", action="store_true", help="every step on CPU (with a tiny --layers/--hidden)"
    )
    args = p.parse_args(argv)
    runs = args.runs.split(",")
    if not set(runs) <= {"lora", "full"} or not runs:
        p.error(f"--runs {args.runs!r}: expected a comma list of lora, full")
    if args.warmup >= args.steps:
        p.error(f"--warmup {args.warmup} must be below --steps {args.steps}")
    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        p.error(
            f"--tokenizer {args.tokenizer}: no tokenizer.json there (bench/gpu_check.sh --prepare copies one)"
        )
    return args


def model_config(args: argparse.Namespace, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(  # SmolLM2's architecture (see its config.json), wider and deeper
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=tokenizer.pad_token_id, attention_dropout=0.0,
    )  # fmt: skip


def matmul_params(config) -> tuple[int, int]:
    """(all parameters, decoder linear weights + LM head) from the config alone."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    return total, linear + config.hidden_size * config.vocab_size


def write_model(folder: Path, config, tokenizer_dir: str) -> None:
    """Random-weight model folder (bf16 safetensors) with the tokenizer beside it."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    for name in Path(tokenizer_dir).iterdir():
        if name.is_file() and ("token" in name.name or name.suffix == ".jinja"):
            shutil.copy(name, folder / name.name)
    del model
    empty_cache()


def write_data(path: Path, tokenizer, num_rows: int, max_tokens: int, seed: int) -> None:
    """Chat rows of random vocabulary words, lengths spread 5-100 % of a row (so packing has work)."""
    rng = random.Random(seed)
    words = [w for w in (tokenizer.decode([i]).strip() for i in range(1000, 20000)) if w.isalpha()]
    with path.open("w") as f:
        for _ in range(num_rows):
            n = rng.randint(max_tokens // 20, int(max_tokens * 0.45))  # words ~ tokens; user + assistant
            user, answer = (" ".join(rng.choices(words, k=n)) for _ in range(2))
            row = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
            f.write(json.dumps(row) + "\n")


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def bf16_peak(n: int = 8192, reps: int = 10) -> float:
    """Best bf16 `torch.matmul` FLOP/s of n³ products on this GPU."""
    a, b = (torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    best = math.inf
    for _ in range(reps + 2):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


class StepTimer:
    """Lightning callback: wall time and non-pad tokens of every training step (GPU synchronised)."""

    def __init__(self):
        self.times, self.tokens, self.losses = [], [], []

    def make(self):
        import lightning as L

        timer = self

        class _Timer(L.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                sync()
                timer._start = time.perf_counter()
                timer.tokens.append(int((batch["segment_ids"] >= 0).sum()))

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                sync()
                timer.times.append(time.perf_counter() - timer._start)
                timer.losses.append(float(trainer.callback_metrics.get("train/loss", float("nan"))))

        return _Timer()


def train(args, folder: Path, data: Path, kind: str, liger: bool, peak: float, linear_n: int) -> dict:
    import lightning as L

    from lit_swift import tuners
    from lit_swift.data.datamodule import SFTDataModule
    from lit_swift.objectives.sft import SFT
    from lit_swift.optim import Constant

    tuner = tuners.LoRA(r=16, alpha=32, dropout=0.0) if kind == "lora" else tuners.Full()
    lr = 2e-4 if kind == "lora" else 1e-5
    module = SFT(
        model=str(folder), tuner=tuner, scheduler=Constant(), liger_kernels=liger,
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0),
    )  # fmt: skip
    dm = SFTDataModule(
        tokenizer=str(folder), dataset=str(data), max_length=args.max_length, packing=True,
        batch_size=args.rows, seed=args.seed, encode_cache=False,
    )  # fmt: skip
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="gpu" if DEVICE == "cuda" else "cpu", devices=1, precision="bf16-mixed", max_steps=args.steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False, callbacks=[timer.make()],
        gradient_clip_val=1.0,
    )  # fmt: skip
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm)
    steady = slice(args.warmup, None)
    seconds, tokens = sum(timer.times[steady]), sum(timer.tokens[steady])
    flops_per_token = (6 if kind == "full" else 4) * linear_n
    result = {
        "run": f"{kind}{' + liger' if liger else ''}",
        "tok/s": tokens / seconds,
        "MFU %": 100 * flops_per_token * tokens / seconds / peak,
        "peak GB": torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else float("nan"),
        "loss first->last": f"{timer.losses[0]:.3f}->{timer.losses[-1]:.3f}",
        "s/step": seconds / len(timer.times[steady]),
    }
    del trainer, module, dm
    empty_cache()
    return result


def loss_equality(folder: Path, data: Path, max_length: int, num_samples: int = 12) -> dict:
    """Mean NLL of the same samples packed into rows vs one per padded row, fp32 and bf16 autocast."""
    from lit_swift import models
    from lit_swift.data.collate import collate_packed, collate_padded, model_inputs
    from lit_swift.data.packing import pack_first_fit_decreasing
    from lit_swift.types import IGNORE_INDEX, EncodedSample

    tok = models.load_tokenizer(str(folder))
    rows = [json.loads(line) for line in data.open()][:num_samples]
    texts = [" ".join(m["content"] for m in r["messages"]) for r in rows]
    # every token trained: the chat template is not what this checks
    ids = [tok(t).input_ids[: max_length // 2] for t in texts]
    samples = [EncodedSample(x, list(x)) for x in ids]
    model = (
        models.load_model(str(folder), dtype="float32", attn_implementation="sdpa_varlen").to(DEVICE).eval()
    )
    bins = pack_first_fit_decreasing([len(s.input_ids) for s in samples], max_length)
    packed = collate_packed([[samples[i] for i in b] for b in bins], tok.pad_token_id)
    padded = collate_padded(samples, tok.pad_token_id)

    def mean_nll(batch: dict, autocast: bool) -> float:
        batch = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            hidden = model.model(**model_inputs(batch)).last_hidden_state
            mask = batch["targets"] != IGNORE_INDEX
            logits = model.lm_head(hidden[mask]).float()
            return float(torch.nn.functional.cross_entropy(logits, batch["targets"][mask]))

    out = {}
    for name, autocast in (("fp32", False), ("bf16", True)):
        a, b = mean_nll(packed, autocast), mean_nll(padded, autocast)
        out[name] = {"packed": a, "padded": b, "rel_diff": abs(a - b) / abs(b)}
    out["rows"] = f"{len(samples)} samples in {len(bins)} packed rows vs {len(samples)} padded rows"
    return out


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = [f"{r[h]:,.1f}" if isinstance(r[h], float) else str(r[h]) for h in HEADER]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from lit_swift import attention, kernels  # noqa: F401  (import check)

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config = model_config(args, tokenizer)
    total, linear_n = matmul_params(config)
    liger_ok = kernels_importable()
    ligers = {"auto": [False, True] if liger_ok else [False], "on": [True], "off": [False]}[args.liger]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.jsonl"
    num_rows = args.rows * (args.steps + 2) * 4  # ~4 samples per packed row, with room to spare
    write_data(data, tokenizer, num_rows, args.max_length, args.seed)
    plan = [f"{k}{' + liger' if lg else ''}" for k in args.runs.split(",") for lg in ligers]
    print(
        f"model: {total / 1e9:.2f} B parameters ({args.layers} layers x {args.hidden}), matmul N {linear_n / 1e9:.2f} B"
    )
    print(f"data: {num_rows} generated rows in {data}; packed rows {args.rows} x {args.max_length} per step")
    print(f"runs: {', '.join(plan)}; liger-kernel {'importable' if liger_ok else 'not installed'}")
    if args.dry_run:
        print("dry run: imports, arguments, tokenizer and data are fine; nothing trained")
        return 0
    global DEVICE
    DEVICE = "cpu" if args.cpu_smoke else "cuda"
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run (or --cpu-smoke) on CPU", file=sys.stderr)
        return 2
    folder = out / "model"
    shutil.rmtree(folder, ignore_errors=True)
    write_model(folder, config, args.tokenizer)
    peak = bf16_peak(256 if args.cpu_smoke else 8192)
    name = (
        torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke run: figures are not GPU figures)"
    )
    print(f"device: {name}, bf16 matmul peak {peak / 1e12:.3f} TFLOP/s")
    print(f"packed attention kernel: {attention.packed_kernel(torch.device(DEVICE))}")
    equal = loss_equality(folder, data, args.max_length)
    empty_cache()
    rows = [train(args, folder, data, k, lg, peak, linear_n) for k in args.runs.split(",") for lg in ligers]
    print(table(rows))
    for name in ("fp32", "bf16"):
        e = equal[name]
        print(
            f"packed vs padded loss ({name}): {e['packed']:.6f} vs {e['padded']:.6f}, rel diff {e['rel_diff']:.1e}"
        )
    print(equal["rows"])
    (out / "results.json").write_text(
        json.dumps({"runs": rows, "loss_equality": equal, "peak": peak}, indent=2)
    )
    ok = equal["fp32"]["rel_diff"] < 1e-4 and equal["bf16"]["rel_diff"] < 2e-2
    print("packed == padded loss:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def kernels_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


if __name__ == "__main__":
    raise SystemExit(main())
