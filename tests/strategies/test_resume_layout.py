"""Resuming on another process/batch layout: silent when the saved run continues exactly, a warning that
names both layouts when it cannot (the DataModule's resume position is a per-process micro-batch count)."""

from __future__ import annotations

import warnings

import pytest

from lit_swift.objectives.base import check_layout
from lit_swift.objectives.sft import SFT


def layout(batch_size: int, accumulate: int, world_size: int) -> dict[str, int]:
    return {"batch_size": batch_size, "accumulate_grad_batches": accumulate, "world_size": world_size}


@pytest.mark.parametrize(
    "saved,now",
    [((2, 1, 2), (4, 1, 1)), ((4, 2, 1), (4, 2, 1)), ((1, 2, 4), (2, 2, 2))],
    ids=["2 ranks x 2 -> 1 x 4", "same", "4 ranks x 1 -> 2 x 2"],
)
def test_layouts_that_resume_exactly_do_not_warn(saved, now):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_layout(layout(*saved), layout(*now))


@pytest.mark.parametrize(
    "saved,now,global_batch_changes",
    [((2, 1, 2), (2, 1, 1), True), ((2, 1, 2), (2, 2, 1), False), ((4, 1, 1), (4, 2, 1), True)],
    ids=["global batch halves", "ranks -> accumulation", "more accumulation"],
)
def test_layouts_that_cannot_resume_exactly_warn(saved, now, global_batch_changes):
    """`ranks -> accumulation` keeps the global batch, yet 3 saved micro-batches per process would
    be 1.5 optimizer steps on the new layout."""
    with pytest.warns(UserWarning, match=r"saved with batch_size \d x .* not an exact resume") as record:
        check_layout(layout(*saved), layout(*now))
    assert ("the global batch changes" in str(record[0].message)) == global_batch_changes


class FakeTrainer:
    datamodule = type("DataModule", (), {"batch_size": 4})()
    accumulate_grad_batches = 1
    world_size = 1


def test_on_load_checkpoint_checks_the_saved_layout():
    objective = SFT("smollm2-135m-instruct")
    objective._trainer = FakeTrainer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        objective.on_load_checkpoint({"layout": layout(2, 1, 2)})  # 2 ranks x 2 -> 1 x 4
        objective.on_load_checkpoint({})  # checkpoints from before the layout was recorded
    with pytest.warns(UserWarning, match="8 rows per step"):
        objective.on_load_checkpoint({"layout": layout(4, 1, 2)})
