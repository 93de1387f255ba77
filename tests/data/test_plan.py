"""EpochPlanSampler: step token counts, disjoint rank shares, accumulation layout, resume and determinism."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lit_swift.data.plan import EpochPlanSampler, check_trainer

ROWS = [(i,) for i in range(10)]
TARGETS = [i + 1 for i in range(10)]  # sample i has i+1 target tokens


def sampler(**kwargs) -> EpochPlanSampler:
    args = {"batch_size": 2, "shuffle": False, "seed": 0, **kwargs}
    return EpochPlanSampler(ROWS, TARGETS, **args)


def indices(plan) -> list[int]:
    return [i for mb in plan for row in mb.rows for i in row]


def test_step_target_tokens_per_micro_batch():
    """accumulate 2, batch 2: steps {0,1,2,3}, {4,5,6,7}, {8,9}: tokens 1+2+3+4, 5+..+8, 9+10."""
    plan = list(sampler(accumulate=2))
    assert [mb.rows for mb in plan] == [((0,), (1,)), ((2,), (3,)), ((4,), (5,)), ((6,), (7,)), ((8,), (9,))]
    assert [mb.step_target_tokens for mb in plan] == [10, 10, 26, 26, 19]


def test_world_size_2_accumulate_2_layout():
    """One step = 4 micro-batches: rank 0 takes the first two, rank 1 the next two; the tail is dropped."""
    rows = [(i,) for i in range(16)]
    targets = [1] * 16
    plans = [
        list(EpochPlanSampler(rows, targets, 2, False, 0, accumulate=2, world_size=2, rank=r)) for r in (0, 1)
    ]
    assert [mb.rows for mb in plans[0]] == [((0,), (1,)), ((2,), (3,)), ((8,), (9,)), ((10,), (11,))]
    assert [mb.rows for mb in plans[1]] == [((4,), (5,)), ((6,), (7,)), ((12,), (13,)), ((14,), (15,))]
    assert all(mb.step_target_tokens == 8 for p in plans for mb in p)


def test_rank_shares_disjoint_and_covering():
    plans = [indices(sampler(batch_size=1, shuffle=True, world_size=2, rank=r)) for r in (0, 1)]
    assert not set(plans[0]) & set(plans[1])
    assert sorted(plans[0] + plans[1]) == list(range(10))  # 10 micro-batches = 5 full steps of 2 ranks
    assert len(plans[0]) == len(plans[1])


def test_ragged_tail_dropped_only_with_several_ranks():
    single = sampler(accumulate=2)
    assert len(list(single)) == 5 and single.num_dropped == 0
    two = sampler(accumulate=2, world_size=2)
    plan = list(two)
    assert len(plan) == 2 and two.num_dropped == 1 and len(two) == 2  # steps of 4 micro-batches: 1 full


def test_resume_at_skips_consumed_micro_batches_once():
    s = sampler(shuffle=True)
    s.set_epoch(3)
    full = list(s)
    s.resume_at(3, 2)
    assert list(s) == full[2:]
    assert list(s) == full  # the skip applies to one pass only
    s.resume_at(3, 2)
    s.set_epoch(4)
    assert list(s) == _epoch(4)  # a skip for another epoch does not apply


def _epoch(epoch: int) -> list:
    s = sampler(shuffle=True)
    s.set_epoch(epoch)
    return list(s)


def test_deterministic_per_epoch_and_reshuffled_across_epochs():
    assert _epoch(0) == _epoch(0) and _epoch(1) == _epoch(1)
    assert _epoch(0) != _epoch(1)
    assert sorted(indices(_epoch(1))) == list(range(10))


def test_plan_is_made_lazily_after_set_epoch():
    """Lightning calls iter() before set_epoch when resuming; the plan must follow the later epoch."""
    s = sampler(shuffle=True)
    s.resume_at(2, 1)
    it = iter(s)
    s.set_epoch(2)
    assert list(it) == _epoch(2)[1:]


def test_distributed_sampler_with_several_ranks_is_refused():
    def trainer(world_size: int, use: bool):
        return SimpleNamespace(
            world_size=world_size, _accelerator_connector=SimpleNamespace(use_distributed_sampler=use)
        )

    check_trainer(trainer(1, True))  # one process: Lightning leaves the sampler alone
    check_trainer(trainer(2, False))
    with pytest.raises(ValueError, match="use_distributed_sampler must be False"):
        check_trainer(trainer(2, True))
