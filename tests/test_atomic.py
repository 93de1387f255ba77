"""Crash-safe writes (`lit_swift.atomic`): a kill at every file-system step of a save leaves the previous
or the new version, a `.ckpt` and its `.hf` folder always hold the same step, and `ckpt_path: last`
resumes from the newest complete checkpoint (issue 13, item 6)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from lit_swift.callbacks.hf_checkpoint import HFCheckpoint, hf_folder
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from lit_swift import atomic, tuners
from lit_swift.data.datamodule import SFTDataModule
from lit_swift.objectives.sft import SFT

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "data/quickstart/identity.jsonl#8")


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no `except Exception` catches it."""


class Killer:
    """Counts the file-system steps of a save (rename, unlink, rmtree, fsync) and dies at step `at`."""

    def __init__(self, monkeypatch, at: int | None = None):
        self.at, self.count = at, 0
        for module, name in ((os, "rename"), (os, "unlink"), (os, "fsync"), (shutil, "rmtree")):
            monkeypatch.setattr(module, name, self.wrap(getattr(module, name)))

    def wrap(self, fn):
        def step(*args, **kwargs):
            self.count += 1
            if self.count == self.at:
                raise Killed(f"killed at step {self.at}")
            return fn(*args, **kwargs)

        return step


def write_version(folder: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        (tmp / "sub").mkdir(parents=True)
        (tmp / "a.txt").write_text(text)
        (tmp / "sub" / "b.txt").write_text(text)

    atomic.write_folder(folder, write)


def contents(folder: Path) -> set[str]:
    return {(folder / "a.txt").read_text(), (folder / "sub" / "b.txt").read_text()}


def test_stale_old_folder_from_a_crashed_run_does_not_block_later_saves(tmp_path):
    # main before: `write_folder` renamed onto a non-empty `last.hf.old` -> OSError: Directory not empty
    write_version(tmp_path / "last.hf", "v1")
    (tmp_path / "last.hf.old").mkdir()
    (tmp_path / "last.hf.old" / "stale.bin").write_text("from a killed run")
    (tmp_path / "last.hf.tmp").mkdir()
    (tmp_path / "last.hf.tmp" / "half.bin").write_text("half written")
    write_version(tmp_path / "last.hf", "v2")
    assert contents(tmp_path / "last.hf") == {"v2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.hf"]


def test_folder_write_killed_at_every_step_keeps_old_or_new(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        write_version(tmp_path / "probe", "v1")
        killer = Killer(patch)
        write_version(tmp_path / "probe", "v2")
    steps = killer.count
    assert steps >= 8  # fsyncs of files and folders, marker, renames, cleanup
    for at in range(1, steps + 1):
        folder = tmp_path / f"f{at}"
        write_version(folder, "old")
        with monkeypatch.context() as patch, pytest.raises(Killed):
            Killer(patch, at)
            write_version(folder, "new")
        atomic.recover_folder(tmp_path)
        assert contents(folder) in ({"old"}, {"new"}), at
        assert (
            not list(tmp_path.glob("*.tmp")) + list(tmp_path.glob("*.old")) + list(tmp_path.glob("*.commit"))
        )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return str(folder)


class FirstStep(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.first = trainer.global_step


def fit(spec: str, root: Path, max_steps: int, ckpt_path: str | None = None, every: int = 1):
    L.seed_everything(0)
    model = SFT(
        spec, tuner=tuners.LoRA(r=4, alpha=8, dropout=0.0), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2)
    )
    data = SFTDataModule(spec, DATA, max_length=64, batch_size=2)
    first = FirstStep()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[HFCheckpoint(dirpath=root, every_n_train_steps=every, save_top_k=-1), first],
    )  # fmt: skip
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, first


def pair_matches(ckpt: Path) -> bool:
    """The adapter weights in `x.ckpt` and in its `x.hf/` are the same (the same step)."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    adapter = load_file(hf_folder(ckpt) / "adapter_model.safetensors")
    by_suffix = {k.split("layers.", 1)[1].replace(".default", ""): v for k, v in saved.items()}
    return all(torch.equal(by_suffix[k.split("layers.", 1)[1]], v) for k, v in adapter.items())


def test_checkpoint_save_killed_at_every_step_keeps_ckpt_and_hf_at_one_step(tiny_dir, tmp_path, monkeypatch):
    trainer, _ = fit(tiny_dir, tmp_path, max_steps=1)
    callback = next(c for c in trainer.callbacks if isinstance(c, HFCheckpoint))
    last = tmp_path / "last.ckpt"
    params = [p for p in trainer.lightning_module.parameters() if p.requires_grad]

    def save():
        with torch.no_grad():
            for p in params:
                p.add_(1.0)  # every save writes other weights than the one before
        callback._save_checkpoint(trainer, str(last))

    with monkeypatch.context() as patch:
        killer = Killer(patch)
        save()
    for at in range(1, killer.count + 1):
        before = last.read_bytes()
        with monkeypatch.context() as patch, pytest.raises(Killed):
            Killer(patch, at)
            save()
        assert callback._find_last_checkpoints(trainer)  # what `ckpt_path: last` runs first: recovery
        assert pair_matches(last), f"killed at step {at}: last.ckpt and last.hf hold different steps"
        leftovers = [p.name for p in tmp_path.iterdir() if p.suffix in (".tmp", ".old", ".commit")]
        assert not leftovers, (at, leftovers)
        if last.read_bytes() == before:
            save()  # a save after the kill works and is consistent
            assert pair_matches(last)


def test_ckpt_path_last_resumes_from_the_newest_complete_checkpoint(tiny_dir, tmp_path, monkeypatch):
    # main before: killed between the step-4 save and the `last` save -> resumed from last.ckpt (step 2)
    def killed_before_last(self, trainer, candidates):
        if trainer.global_step == 4:
            raise Killed("killed between the step save and the last save")
        return original(self, trainer, candidates)

    original = HFCheckpoint._save_last_checkpoint
    monkeypatch.setattr(HFCheckpoint, "_save_last_checkpoint", killed_before_last)
    with pytest.raises(Killed):
        fit(tiny_dir, tmp_path, max_steps=6, every=2)
    monkeypatch.undo()
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2
    _, first = fit(tiny_dir, tmp_path, max_steps=6, ckpt_path="last", every=2)
    assert first.first == 4
