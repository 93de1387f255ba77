"""LoRA siblings that read the same input (q/k/v; gate/up) computed as one base matmul and one adapter pair.

In a LoRA step on CPU, each adapted projection costs a large frozen matmul plus two skinny rank-r
matmuls, an in-place add and their backward, each re-reading the activation. Siblings that take the
same input can share all of it: their frozen weights are stacked into one `[sum(out), in]` tensor
(the members' weights become views of it, so no memory is added), their A matrices are stacked
into one `[sum(r), in]` matmul on the (shared-dropout) input, and their B matrices, scaled, form one
block-diagonal `[sum(out), sum(r)]` matmul added in place; each member returns its column slice.
Backward then does one input-gradient matmul per group instead of one per member.

The math and the dropout draws are those of the members run one by one (`tests/test_lora_groups.py`).
The stacking happens at the first forward, after Lightning has moved the model to its device, and
is redone once if the weights are moved again (`.to()` replaces them); weights that another system
manages (FSDP, DeepSpeed ZeRO-3, trainable base weights) turn the group off for good, and the
members then run as before. Forward hooks on `lora_A`/`lora_B` modules do not fire for grouped
members (their weights are used directly).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Child names of one parent module that read the same input (Llama, Qwen, Mistral, Gemma naming)."""


class SiblingGroup:
    """Adapted projections of one parent that take the same input, computed together.

    Args:
        members: peft `lora.Linear` layers, in output order.
        adapter: the one adapter name they all carry.
        single: the members' own forward, used whenever the group cannot serve a call.
    """

    max_restacks = 1
    """How often the weights may be re-stacked after being replaced (one device or dtype move)."""

    def __init__(self, members: list[nn.Module], adapter: str, single: Callable[..., Tensor]):
        self.members, self.adapter, self.single = members, adapter, single
        self.sizes = [m.base_layer.out_features for m in members]
        self.stacked: Tensor | None = None
        self.restacks = 0
        self.enabled = True
        self._input: tuple[Any, int] | None = None  # (weakref to the input, its version)
        self._pending: dict[int, Tensor] = {}

    def __call__(self, index: int, x: Tensor) -> Tensor:
        """Member `index`'s output for input `x`."""
        if self._input is not None and index in self._pending:
            ref, version = self._input
            if ref() is x and x._version == version:
                out = self._pending.pop(index)
                if not self._pending:
                    self._input = None
                return out
        if not (self.enabled and self._usable(x) and self._stack()):
            return self.single(self.members[index], x)
        outs = self._compute(x)
        self._pending = {i: out for i, out in enumerate(outs) if i != index}
        self._input = (weakref.ref(x), x._version)
        return outs[index]

    # ----- conditions -----
    def _usable(self, x: Tensor) -> bool:
        name = self.adapter
        if torch.is_autocast_enabled(x.device.type):
            return False
        return all(
            list(m.active_adapters) == [name]
            and not m.merged
            and name in m.lora_A
            and name not in m.lora_variant
            for m in self.members
        )

    def _stack(self) -> bool:
        """Make the members' weights views of one stacked tensor; False when that is not possible."""
        weights = [m.base_layer.weight for m in self.members]
        if self.stacked is not None and _views_of(weights, self.stacked):
            return True
        managed = any(
            type(w.data) is not torch.Tensor or hasattr(w, "ds_id") or w.requires_grad or w.is_meta
            for w in weights
        )
        moved = self.stacked is not None and self.restacks >= self.max_restacks
        if managed or moved or len({(w.device, w.dtype) for w in weights}) > 1:
            self.enabled = False  # another system owns these weights: members run one by one from now on
            return False
        if self.stacked is not None:
            self.restacks += 1
        with torch.no_grad():
            self.stacked = torch.cat([w.detach() for w in weights])
        for w, view in zip(weights, self.stacked.split(self.sizes), strict=True):
            w.data = view
        return True

    # ----- math -----
    def _compute(self, x: Tensor) -> list[Tensor]:
        members, name = self.members, self.adapter
        biases = [m.base_layer.bias for m in members]
        bias = None if biases[0] is None else torch.cat(biases)
        rows = x.reshape(-1, x.shape[-1])  # 2-D, so the in-place add below is on a base tensor, not a view
        out = F.linear(rows, self.stacked, bias)  # [rows, sum(out)]
        if not any(m.disable_adapters for m in members):
            first = members[0]
            a_weight = torch.cat([m.lora_A[name].weight for m in members])  # [sum(r), in]
            dropped = first.lora_dropout[name](first._cast_input_dtype(x, a_weight.dtype))  # shared mask
            a = F.linear(dropped.reshape(rows.shape), a_weight)  # [rows, sum(r)]
            b_weight = torch.block_diag(*(m.lora_B[name].weight * m.scaling[name] for m in members))
            if out.dtype == a.dtype:
                out.addmm_(a, b_weight.t())
            else:
                out = out + F.linear(a, b_weight).to(out.dtype)
        return list(out.view(*x.shape[:-1], out.shape[-1]).split(self.sizes, dim=-1))

    def release(self) -> None:
        """Give every member its own weight storage again and stop grouping (before merging or saving)."""
        self.enabled, self._pending, self._input = False, {}, None
        if self.stacked is not None:
            for m in self.members:
                m.base_layer.weight.data = m.base_layer.weight.data.clone()
            self.stacked = None


def _views_of(weights: list[Tensor], stacked: Tensor) -> bool:
    """Whether `weights` still sit, in order, in `stacked`'s storage (a `.to()` or FSDP replaces them)."""
    offset = 0
    for w in weights:
        if (
            w.device != stacked.device
            or w.dtype != stacked.dtype
            or w.untyped_storage().data_ptr() != stacked.untyped_storage().data_ptr()
            or w.storage_offset() != offset
        ):
            return False
        offset += w.numel()
    return True


def _member_forward(self: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    group, index = self._lit_sibling_group
    if args or kwargs:
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
    import types

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
                or len({m.base_layer.bias is None for m in members}) != 1
            ):
                continue
            group = SiblingGroup(members, name, single)
            for index, m in enumerate(members):
                m._lit_sibling_group = (group, index)
                m.forward = types.MethodType(_member_forward, m)
            groups += 1
    return groups


def release_groups(model: nn.Module) -> int:
    """Undo `group_siblings`' weight sharing on every group of `model` (members run one by one after)."""
    released = set()
    for module in model.modules():
        group = getattr(module, "_lit_sibling_group", (None,))[0]
        if group is not None and id(group) not in released:
            group.release()
            released.add(id(group))
    return len(released)
