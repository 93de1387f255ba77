#!/usr/bin/env python
"""TRL RewardTrainer peer for bench/run_objectives.sh: LoRA reward model (Bradley-Terry, one scalar head) on the
shared dpo.jsonl pairs (`messages` ending with the chosen turn + `rejected_response`), converted to TRL's
conversational prompt/chosen/rejected format. Settings mirror `swift rlhf --rlhf_type rm`: LoRA r8/alpha 32/
dropout 0.05 on all linear layers (the score head trained in full, peft's SEQ_CLS default), constant LR, no
eval or saving; `--precision fp32|amp|bf16` as the shared peers/trl_dpo.py.
"""

import argparse
import json
import time

T_START = time.time()
PRECISIONS = {"fp32": ("float32", False), "amp": ("float32", True), "bf16": ("bfloat16", True)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="the shared dpo.jsonl")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--bs", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    load_dtype, use_bf16 = PRECISIONS[a.precision]
    model = AutoModelForSequenceClassification.from_pretrained(
        a.model, num_labels=1, dtype=getattr(torch, load_dtype)
    )
    model.config.pad_token_id = tok.pad_token_id
    ds = load_dataset("json", data_files=a.data, split="train")

    def conv(r):
        m = r["messages"]
        return {
            "prompt": m[:-1],
            "chosen": m[-1:],
            "rejected": [{"role": "assistant", "content": r["rejected_response"]}],
        }

    ds = ds.map(conv, remove_columns=ds.column_names)
    cfg = RewardConfig(
        output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.bs, gradient_accumulation_steps=1,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], seed=a.seed,
        bf16=use_bf16, fp16=False, use_cpu=True, gradient_checkpointing=False, dataloader_num_workers=0,
        max_length=a.max_length, dataset_num_proc=1, disable_tqdm=True,
    )  # fmt: skip
    peft_cfg = LoraConfig(
        r=8, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="SEQ_CLS"
    )
    tr = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg)
    t0 = time.time()
    res = tr.train()
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    print("BENCH_RESULT " + json.dumps({
        "peer": "trl", "task": "rm", "precision": a.precision, "setup_s": t0 - T_START,
        "train_call_s": time.time() - t0, "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None, "train_loss_mean": res.training_loss,
        "steps": tr.state.global_step,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
