"""LoRA siblings that read the same input (q/k/v; gate/up) run their adapters as one group.

In a CPU LoRA step each adapted projection adds two skinny rank-r matmuls, an in-place add and their
backward to its frozen matmul, each re-reading the activation. Siblings that take the same input (and,
with `shared_dropout`, the same dropped input) can share the first half: their A matrices are stacked
into one `[sum(r), in]` matmul on that input, whose output columns each member's B then adds in place to
that member's own frozen output. Backward likewise does one input-gradient matmul for the A's and adds
one gradient into the input instead of one per member. Frozen weights are not touched (no copies, so
no memory is added, and sharded or quantised weights work as before).

The math and the dropout draws are those of the members run one by one (`tests/test_lora_groups.py`).
Forward hooks on `lora_A`/`lora_B` modules do not fire for grouped members (their weights are used
directly); anything unusual in a call (several or disabled-then-merged adapters, DoRA, autocast, extra
arguments) runs the members one by one.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Child names of one parent module that read the same input (Llama, Qwen, Mistral, Gemma naming)."""


class SiblingGroup:
    """Adapted projections of one parent that take the same input, their adapters computed together.

    Args:
        members: peft `lora.Linear` layers.
        adapter: the one adapter name they all carry.
        single: the members' own forward, `single(member, x, *args, **kwargs)`, used whenever the group
            cannot serve a call.
    """

    def __init__(self, members: list[nn.Module], adapter: str, single: Callable[..., Tensor]):
        self.members, self.adapter, self.single = members, adapter, single
        self._input: tuple[Any, int, bool] | None = None  # (weakref to the input, its version, adapters off)
        self._pending: dict[int, Tensor] = {}  # outputs computed for that input, not yet taken

    def __call__(self, index: int, x: Tensor) -> Tensor:
        """Member `index`'s output for input `x` (computed with its siblings' on the first call)."""
        if not self._usable(x):  # (also drops outputs computed in another mode, e.g. outside autocast)
            self._pending, self._input = {}, None
            return self.single(self.members[index], x)
        if self._input is not None and index in self._pending:
            ref, version, off = self._input
            if ref() is x and x._version == version and off == self._adapters_off():
                out = self._pending.pop(index)
                if not self._pending:
                    self._input = None
                return out
        outs = self._compute(x)
        self._pending = {i: out for i, out in enumerate(outs) if i != index}
        self._input = (weakref.ref(x), x._version, self._adapters_off()) if self._pending else None
        return outs[index]

    def _adapters_off(self) -> bool:
        return any(m.disable_adapters for m in self.members)

    def _usable(self, x: Tensor) -> bool:
        name = self.adapter
        return not torch.is_autocast_enabled(x.device.type) and all(
            list(m.active_adapters) == [name]
            and not m.merged
            and name in m.lora_A
            and name not in m.lora_variant
            for m in self.members
        )

    def _compute(self, x: Tensor) -> list[Tensor]:
        members, name = self.members, self.adapter
        rows = x.reshape(-1, x.shape[-1])  # 2-D: the in-place adds below then hit base tensors, not views
        outs = [m.base_layer(rows) for m in members]  # [rows, out_i] each
        if not self._adapters_off():
            first = members[0]
            a_weight = torch.cat([m.lora_A[name].weight for m in members])  # [sum(r), in]
            dropped = first.lora_dropout[name](first._cast_input_dtype(x, a_weight.dtype))  # shared mask
            a = F.linear(dropped.reshape(rows.shape[0], -1), a_weight)  # [rows, sum(r)]
            start = 0
            for i, m in enumerate(members):
                b = m.lora_B[name].weight  # [out_i, r_i]
                part = a[:, start : start + b.shape[1]]
                start += b.shape[1]
                outs[i] = add_update(outs[i], part, b, m.scaling[name])
        return [out.view(*x.shape[:-1], out.shape[-1]) for out in outs]


def add_update(out: Tensor, a: Tensor, b_weight: Tensor, scaling: float) -> Tensor:
    """`out + scaling * a @ b_weight^T`: in place when the dtypes agree (then `out` must not be a view,
    or autograd would copy its whole gradient), else cast to `out`'s dtype (bf16 base, fp32 adapters)."""
    if out.dtype == a.dtype:
        return out.addmm_(a, b_weight.t(), alpha=scaling)
    return out + (F.linear(a, b_weight) * scaling).to(out.dtype)


def _member_forward(self: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    group, index = self._lit_sibling_group
    if args or kwargs or torch.compiler.is_compiling():  # compiled graphs trace the members one by one
        return group.single(self, x, *args, **kwargs)
    return group(index, x)


def group_siblings(
    model: nn.Module,
    layer_type: type,
    single: Callable[..., Tensor],
    shared_input: Callable[[nn.Module], bool],
) -> int:
    """Group the LoRA siblings of `model` (see `SIBLINGS`); returns how many groups were formed.

    Args:
        model: a peft model.
        layer_type: peft's `lora.Linear` (passed in: `lit_swift.tuners` stays the only peft importer).
        single: the forward a member falls back to, called as `single(member, x, *args, **kwargs)`.
        shared_input: whether a member's dropout gives every sibling the very same dropped input
            (a shared-mask dropout, or none); siblings whose dropouts draw separately are not grouped.
    """
    groups = 0
    for parent in model.modules():
        for names in SIBLINGS:
            members = [parent._modules.get(n) for n in names]
            if not all(type(m) is layer_type for m in members):
                continue
            adapters = {tuple(m.lora_A) for m in members}
            if len(adapters) != 1 or len(next(iter(adapters))) != 1:
                continue
            (name,) = next(iter(adapters))
            drops = [m.lora_dropout[name] for m in members]
            if (
                len({m.in_features for m in members}) != 1
                or any(m.lora_B[name].bias is not None or name in m.lora_variant for m in members)
                or len({getattr(d, "p", 0.0) for d in drops}) != 1
                or not all(shared_input(d) for d in drops)
            ):
                continue
            group = SiblingGroup(members, name, single)
            for index, m in enumerate(members):
                m._lit_sibling_group = (group, index)
                m.forward = types.MethodType(_member_forward, m)
            groups += 1
    return groups
