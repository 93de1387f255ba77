"""HFCheckpoint under sharding strategies: which objectives can write their HF folder from gathered
weights, and the atomic swap of checkpoint folders (DeepSpeed and FSDP `sharded` save folders)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lit_swift.callbacks.hf_checkpoint import check_can_save_hf
from lit_swift.strategies.ddp import DDP
from lit_swift.strategies.fsdp import FSDP

from lit_swift import atomic
from lit_swift.objectives.reward import RewardModel
from lit_swift.objectives.sft import SFT


def test_sharded_strategies_need_a_save_hf_that_takes_gathered_weights():
    sft = SFT("smollm2-135m-instruct")
    reward = RewardModel("smollm2-135m-instruct")  # merges LoRA into a copy of the whole model
    check_can_save_hf(FSDP(), sft)
    check_can_save_hf(DDP(), reward)
    with pytest.raises(ValueError, match=r"RewardModel.save_hf .* FSDP .*save_hf: false"):
        check_can_save_hf(FSDP(), reward)


def commit(target: Path) -> None:
    with atomic.transaction(target) as staged:
        staged.append(target)


def test_commit_swaps_files_and_folders(tmp_path: Path):
    file_tmp, file_dst = tmp_path / "a.ckpt.tmp", tmp_path / "a.ckpt"
    file_dst.write_text("old")
    file_tmp.write_text("new")
    commit(file_dst)
    assert file_dst.read_text() == "new" and not file_tmp.exists()

    dir_tmp, dir_dst = tmp_path / "last.ckpt.tmp", tmp_path / "last.ckpt"
    (dir_dst / "checkpoint").mkdir(parents=True)
    (dir_dst / "checkpoint" / "old.pt").write_text("old")
    (dir_tmp / "checkpoint").mkdir(parents=True)
    (dir_tmp / "checkpoint" / "new.pt").write_text("new")
    commit(dir_dst)
    assert [p.name for p in (dir_dst / "checkpoint").iterdir()] == ["new.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "last.ckpt"]  # no .tmp, .old, .commit

    (tmp_path / "b.ckpt").write_text("a file from an unsharded run")
    (tmp_path / "b.ckpt.tmp").mkdir()
    commit(tmp_path / "b.ckpt")
    assert (tmp_path / "b.ckpt").is_dir() and not (tmp_path / "b.ckpt.old").exists()
