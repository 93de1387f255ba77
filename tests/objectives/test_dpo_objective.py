"""DPO objective: reference log-probs (adapter-disabled, frozen copy, precomputed), packing, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_swift import models, tuners
from lit_swift.cli import main
from lit_swift.data.preference import PairItem, PreferenceDataModule, collate_pairs
from lit_swift.data.template import ChatEncoder
from lit_swift.losses.preference import SimPO
from lit_swift.objectives.dpo import DPO, model_sequence_logps

SMOLLM2 = "smollm2-135m-instruct"
TWO_LAYERS = {"num_hidden_layers": 2}
ROOT = Path(__file__).resolve().parents[2]
PAIRS = [
    ("What is 2 + 3?", "2 + 3 = 5\nFinal answer: 5", "2 + 3 = 6\nFinal answer: 6"),
    ("Name a primary colour.", "Red.", "Purple, which is a primary colour."),
    ("What is 10 - 4?", "10 - 4 = 6\nFinal answer: 6", "Final answer: 7"),
]


@pytest.fixture(scope="module")
def items(smollm2_tokenizer):
    enc = ChatEncoder(smollm2_tokenizer)
    msgs = [[{"role": "user", "content": p}] for p, _, _ in PAIRS]
    return [
        PairItem(
            enc.encode_completion(m, {"role": "assistant", "content": c}),
            enc.encode_completion(m, {"role": "assistant", "content": r}),
        )  # fmt: skip
        for m, (_, c, r) in zip(msgs, PAIRS, strict=True)
    ]


def _dpo(tuner, **kwargs) -> DPO:
    module = DPO(model=SMOLLM2, config_overrides=TWO_LAYERS, tuner=tuner, **kwargs)
    module.configure_model()
    return module


def _steps(module: DPO, batch, num_steps: int = 3) -> None:
    params = [p for p in module.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(num_steps):
        loss, _ = module.loss(module.pair_logps(batch))
        assert math.isfinite(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_lora_reference_equals_base_model_after_steps(items):
    batch = collate_pairs(items, pad_id=2, packed=False, max_length=256)
    module = _dpo(tuners.LoRA(r=4, alpha=16, dropout=0.0))
    assert module.reference is None  # no second model for LoRA
    _steps(module, batch)
    reference = module.reference_logps(batch)  # [2B]
    base = models.load_model(SMOLLM2, config_overrides=TWO_LAYERS)
    with torch.no_grad():
        expected, _ = model_sequence_logps(base, batch)
        policy, _ = model_sequence_logps(module.model, batch)
    torch.testing.assert_close(reference, expected, atol=1e-4, rtol=1e-5)
    assert (policy - reference).abs().max() > 1e-2  # the policy did move away from the reference


def test_full_finetune_reference_copy_stays_frozen(items):
    batch = collate_pairs(items[:2], pad_id=2, packed=False, max_length=256)
    module = _dpo(tuners.Full())
    before = {k: v.clone() for k, v in module.reference.state_dict().items()}
    module.train()
    assert not module.reference.training and not any(p.requires_grad for p in module.reference.parameters())
    _steps(module, batch, num_steps=2)
    after = module.reference.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(module.model.get_parameter(name), module.reference.get_parameter(name))
    on_save = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(on_save)
    assert not any(k.startswith("reference.") for k in on_save["state_dict"])  # lean checkpoint


def test_packed_pair_logps_equal_padded(items):
    module = _dpo(tuners.LoRA(r=4, dropout=0.0))
    padded = collate_pairs(items, pad_id=2, packed=False, max_length=256)
    packed = collate_pairs(items, pad_id=2, packed=True, max_length=256)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    with torch.no_grad():
        a, count_a = model_sequence_logps(module.model, padded)
        b, count_b = model_sequence_logps(module.model, packed)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    assert torch.equal(count_a, count_b)


def test_reference_free_loss_computes_no_reference(items):
    module = _dpo(tuners.Full(), loss=SimPO())
    assert module.reference is None
    logps = module.pair_logps(collate_pairs(items[:2], pad_id=2, packed=False, max_length=256))
    assert logps.ref_chosen is None and logps.chosen.shape == (2,)


def test_precomputed_reference_is_the_initial_model(tmp_path):
    data = PreferenceDataModule(SMOLLM2, str(ROOT / "data/preference/dpo_train.jsonl#4"), max_length=256,
                                batch_size=2, shuffle=False)  # fmt: skip
    module = DPO(model=SMOLLM2, config_overrides=TWO_LAYERS, tuner=tuners.Full(), precompute_ref=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, data)
    assert module.reference is None and module.ref_cache.shape == (4, 2)
    base = models.load_model(SMOLLM2, config_overrides=TWO_LAYERS)
    for loader in data.reference_dataloaders():
        for batch in loader:
            with torch.no_grad():
                sums, _ = model_sequence_logps(base, batch)
            torch.testing.assert_close(
                module.ref_cache[batch["row_ids"]], sums.view(2, -1).T, atol=1e-4, rtol=0
            )
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert torch.equal(checkpoint["reference_logps"], module.ref_cache)


@pytest.mark.parametrize("config", ["dpo", "simpo"])
def test_fit_debug_config(config, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", f"configs/debug/{config}.yaml", "--trainer.default_root_dir", str(tmp_path)])
    run = next(tmp_path.glob("lightning_logs/version_*"))
    assert (run / "checkpoints" / "last.hf" / "adapter_config.json").exists()
    lines = (run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    losses = [float(v) for line in lines[1:] if (v := line.split(",")[header.index("train/loss")])]
    assert losses and all(math.isfinite(x) for x in losses)


def test_print_config(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/dpo/lora.yaml", "--print_config"])
    out = capsys.readouterr().out
    assert "lit_swift.losses.preference.SigmoidDPO" in out and "precompute_ref: false" in out
