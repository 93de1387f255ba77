#!/usr/bin/env python
"""TRL KTOTrainer peer for bench/run_objectives.sh: LoRA KTO on the rows of bench/kto_data.py (`messages` ending
with the completion + boolean `label`), converted to TRL's conversational prompt/completion/label format.
Reference = the base with the adapter disabled (TRL's default for peft). Settings mirror
`swift rlhf --rlhf_type kto`: beta 0.1, desirable/undesirable weights 1, LoRA r8/alpha 32/dropout 0.05 on all
linear layers, constant LR, no eval or saving; `--precision fp32|amp|bf16` as the shared peers/trl_dpo.py.
Needs TRL >= 1.8 (KTOTrainer in the top-level package).
"""

import argparse
import json
import time

T_START = time.time()
PRECISIONS = {"fp32": ("float32", False), "amp": ("float32", True), "bf16": ("bfloat16", True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="bench/kto_data.py output")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--bs", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    load_dtype, use_bf16 = PRECISIONS[a.precision]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, load_dtype))
    ds = load_dataset("json", data_files=a.data, split="train")
    ds = ds.map(
        lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:], "label": r["label"]},
        remove_columns=ds.column_names,
    )
    cfg = KTOConfig(
        output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.bs, gradient_accumulation_steps=1,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], seed=a.seed,
        bf16=use_bf16, fp16=False, use_cpu=True, gradient_checkpointing=False, dataloader_num_workers=0,
        max_length=a.max_length, beta=a.beta, desirable_weight=1.0, undesirable_weight=1.0,
        dataset_num_proc=1, disable_tqdm=True,
    )  # fmt: skip
    peft_cfg = LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    tr = KTOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg)
    t0 = time.time()
    res = tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    print("BENCH_RESULT " + json.dumps({
        "peer": "trl", "task": "kto", "precision": a.precision, "setup_s": t0 - T_START,
        "train_call_s": time.time() - t0, "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None, "train_loss_mean": res.training_loss,
        "steps": tr.state.global_step,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
