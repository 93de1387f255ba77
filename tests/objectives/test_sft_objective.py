"""SFT objective: the optimizer-step gradient is a token-weighted mean however the step's data arrives,
and every SFT/CPT debug config trains end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_swift.cli import main
from lit_swift.data.datamodule import SFTDataModule
from lit_swift.objectives.sft import SFT
from lit_swift.tuners import LoRA

ROOT = Path(__file__).resolve().parents[2]
ANSWERS = ["Yes.", "I am Lit, a small assistant.", "Paris is the capital of France. " * 4, "Four."]


class GradientRecorder(L.Callback):
    """LoRA gradients as the optimizer sees them (after accumulation), and the returned losses."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("chat") / "four.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": a}]}
        for i, a in enumerate(ANSWERS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def one_step(chat_file: str, batch_size: int, accumulate: int, packing: bool) -> GradientRecorder:
    L.seed_everything(0)
    model = SFT(
        "smollm2-135m-instruct",
        tuner=LoRA(r=4, alpha=8, dropout=0.0),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        config_overrides={"num_hidden_layers": 1},
    )
    data = SFTDataModule(
        "smollm2-135m-instruct",
        chat_file,
        max_length=256,
        batch_size=batch_size,
        shuffle=False,
        packing=packing,
    )
    recorder = GradientRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(model, data)
    assert len(recorder.losses) == accumulate
    return recorder


def test_gradient_is_the_same_for_one_batch_accumulation_and_packing(chat_file):
    """Batch 4 (padded), 4 micro-batches of 1 with accumulate 4 (padded), and one packed row agree."""
    whole = one_step(chat_file, batch_size=4, accumulate=1, packing=False)
    accumulated = one_step(chat_file, batch_size=1, accumulate=4, packing=False)
    packed = one_step(chat_file, batch_size=1, accumulate=1, packing=True)  # all 4 fit one packed row
    assert whole.grads and any(g.abs().sum() > 0 for g in whole.grads.values())
    for other in (accumulated, packed):
        assert other.grads.keys() == whole.grads.keys()
        for name, grad in whole.grads.items():
            # fp32 summation order differs between the layouts: tolerance relative to the gradient's scale
            torch.testing.assert_close(
                other.grads[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item()
            )
        # Lightning's step outputs are already divided by accumulate: their sum is the step's loss
        assert sum(other.losses) == pytest.approx(whole.losses[0], rel=1e-5)


def test_unequal_micro_batches_are_not_averaged_per_batch(chat_file):
    """Guard the test itself: a per-micro-batch mean would weight the one-token answer like the long one."""
    data = SFTDataModule("smollm2-135m-instruct", chat_file, max_length=256)
    data.setup()
    from lit_swift.data.datamodule import num_targets

    counts = [num_targets(s) for s in data.train_samples]
    assert max(counts) > 4 * min(counts)


# ----- every SFT/CPT debug twin end to end -----
@pytest.mark.parametrize("name", ["sft_dora", "sft_full", "cpt"])
def test_debug_config_trains(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", f"configs/debug/{name}.yaml", "--trainer.default_root_dir", str(tmp_path)])
    run = next(tmp_path.glob("lightning_logs/version_*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) < sum(losses[:2])
    hf = run / "checkpoints" / "last.hf"
    assert (hf / "tokenizer.json").exists()
    assert (hf / "adapter_config.json").exists() or (hf / "model.safetensors").exists()
