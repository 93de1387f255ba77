"""Which weights train: full, freeze, LoRA/DoRA/rsLoRA/LoRA+ and QLoRA; the only module importing peft.

A tuner is picked in YAML by `class_path` (e.g. `lit_swift.tuners.LoRA`) and applied to a loaded
model by the objective; it also supplies optimizer parameter groups (LoRA+ gives B matrices their
own learning rate) and any extra `from_pretrained` arguments (QLoRA's 4-bit loading).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import types
import weakref
from typing import Any, Literal

import torch
from torch import nn

from lit_swift import lora_groups

TaskType = Literal["CAUSAL_LM", "FEATURE_EXTRACTION", "SEQ_CLS"]
"""What the objective puts on top of the model: LM head, pooled features, or a classification head."""


class Tuner:
    """Base tuner: every parameter trains."""

    def load_kwargs(self) -> dict[str, Any]:
        """Extra `from_pretrained` arguments this tuner needs (e.g. 4-bit quantisation)."""
        return {}

    def apply(self, model: nn.Module, task_type: TaskType = "CAUSAL_LM") -> nn.Module:
        """Prepare `model` for training; `task_type` names the head the objective uses (peft's task types)."""
        model.requires_grad_(True)
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimizer groups; a group's `lr_scale` multiplies the optimizer's learning rate."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]

    @property
    def is_adapter(self) -> bool:
        return False


class Full(Tuner):
    """Full fine-tuning: every weight of the model trains."""


class Freeze(Tuner):
    """Train only the parameters whose names match one of `trainable` (regular expressions).

    Args:
        trainable: patterns searched in parameter names, e.g. `["layers\\.2[89]\\.", "norm"]`.
    """

    def __init__(self, trainable: list[str]):
        self.trainable = trainable

    def apply(self, model: nn.Module, task_type: TaskType = "CAUSAL_LM") -> nn.Module:
        patterns = [re.compile(p) for p in self.trainable]
        matched = 0
        for name, param in model.named_parameters():
            param.requires_grad_(any(p.search(name) for p in patterns))
            matched += param.requires_grad
        if not matched:
            raise ValueError(f"Freeze: no parameter name matches any of {self.trainable}")
        return model


class LoRA(Tuner):
    """Low-rank adapters (Hu et al. 2021) via peft; DoRA, rsLoRA and LoRA+ as switches.

    Args:
        r: adapter rank.
        alpha: scaling numerator (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt, or `all-linear` (every linear layer but the LM head).
        use_dora: weight-decomposed LoRA (Liu et al. 2024).
        use_rslora: rank-stabilised scaling (Kalajdzievski 2023).
        modules_to_save: modules trained in full and saved with the adapter (e.g. `["lm_head"]`).
        lora_plus_ratio: LoRA+ (Hayou et al. 2024): the B matrices' learning rate is this many times the
            optimizer's; None keeps one learning rate.
        shared_dropout: draw one dropout mask per distinct adapter input rather than one per adapter:
            q/k/v share the attention input and gate/up the MLP input, so a layer draws 4 masks, not 7
            (as a model with fused qkv/gate_up projections would). Each adapter still sees its input
            dropped with probability `dropout`; only the masks of siblings coincide. Random masks are
            a large part of a CPU LoRA step; False draws one per adapter, as peft does.
        fuse_siblings: adapted siblings that read the same input (q/k/v, gate/up) run their A matrices as
            one matmul on that input (`lit_swift.lora_groups`): the same math and draws, fewer skinny
            matmuls and gradient adds. Needs `shared_dropout` (or no dropout) to apply.
    """

    def __init__(
        self,
        r: int = 8,
        alpha: int = 32,
        dropout: float = 0.05,
        target_modules: str | list[str] = "all-linear",
        use_dora: bool = False,
        use_rslora: bool = False,
        modules_to_save: list[str] | None = None,
        lora_plus_ratio: float | None = None,
        shared_dropout: bool = True,
        fuse_siblings: bool = True,
    ):
        self.r, self.alpha, self.dropout, self.shared_dropout = r, alpha, dropout, shared_dropout
        self.fuse_siblings = fuse_siblings
        self.target_modules, self.modules_to_save = target_modules, modules_to_save
        self.use_dora, self.use_rslora, self.lora_plus_ratio = use_dora, use_rslora, lora_plus_ratio

    @property
    def is_adapter(self) -> bool:
        return True

    def peft_config(self, task_type: TaskType = "CAUSAL_LM"):
        """peft's config; with `SEQ_CLS` peft also trains and saves the classification head in full."""
        from peft import LoraConfig

        return LoraConfig(
            task_type=task_type,
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            use_dora=self.use_dora,
            use_rslora=self.use_rslora,
            modules_to_save=self.modules_to_save,
        )

    def apply(self, model: nn.Module, task_type: TaskType = "CAUSAL_LM") -> nn.Module:
        from peft import get_peft_model

        model = get_peft_model(model, self.peft_config(task_type))
        if self.dropout > 0:
            use_input_dropout(model, shared=self.shared_dropout)
        use_fused_lora_forward(model)
        if self.fuse_siblings:
            from peft.tuners.lora import Linear

            lora_groups.group_siblings(model, Linear, _fused_lora_forward, shares_input)
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        if self.lora_plus_ratio is None:
            return super().param_groups(model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        b = [p for n, p in named if "lora_B" in n]
        rest = [p for n, p in named if "lora_B" not in n]
        return [{"params": rest, "lr_scale": 1.0}, {"params": b, "lr_scale": self.lora_plus_ratio}]


class QLoRA(LoRA):
    """LoRA on a 4-bit NF4 base (Dettmers et al. 2023); needs bitsandbytes and a CUDA GPU."""

    def load_kwargs(self) -> dict[str, Any]:
        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise ValueError(
                "QLoRA needs the bitsandbytes package and a CUDA GPU (pip install 'lit-swift[gpu]'); "
                "on CPU use lit_swift.tuners.LoRA"
            )
        from transformers import BitsAndBytesConfig

        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        return {"quantization_config": config}

    def apply(self, model: nn.Module, task_type: TaskType = "CAUSAL_LM") -> nn.Module:
        from peft import prepare_model_for_kbit_training

        prepared = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().apply(prepared, task_type)


def keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """A bool mask shaped like `x` keeping each element with probability 1 - p', and 1 / (1 - p').

    One 64-bit random number gives four 16-bit draws, a quarter of the generator calls of
    `rand_like` (whose serial Mersenne Twister is most of a CPU dropout's cost); p' is p rounded to
    a multiple of 2^-16 (0.05 -> 0.0500031), and the returned scale uses p', so the dropped tensor
    stays unbiased.
    """
    cut = round(p * 65536)
    if cut >= 65536:
        return torch.zeros_like(x, dtype=torch.bool), 0.0
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device)
    draws = words.random_(-(2**63), None).view(torch.int16)[: x.numel()].view(x.shape)
    return draws >= cut - 32768, 65536 / (65536 - cut)


class _MaskedScale(torch.autograd.Function):
    """`x * mask / (1 - p)` with a bool mask from `keep_mask`; backward keeps only the mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x, p)
        ctx.save_for_backward(keep)  # 1 byte per element
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)  # where: no float copy of the mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


class InputDropout(nn.Module):
    """Inverted dropout for a LoRA adapter's input: fewer kernels than `nn.Dropout` on CPU.

    With `shared`, consecutive calls on the very same input tensor (q/k/v, or gate/up, in one forward)
    return the same dropped tensor: one mask per distinct input. The cache holds one entry and checks
    tensor identity through a weak reference, so a new forward (or a gradient-checkpointing recompute,
    whose RNG state torch restores) always draws afresh.
    """

    _last: tuple = (None, None, None)  # (weakref to input, p, output), shared by all instances

    def __init__(self, p: float, shared: bool = True):
        super().__init__()
        self.p, self.shared = p, shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        ref, p, out = InputDropout._last
        if self.shared and ref is not None and ref() is x and p == self.p:
            return out
        out = _MaskedScale.apply(x, self.p)
        if self.shared:
            InputDropout._last = (weakref.ref(x), self.p, out)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, shared={self.shared}"


def shares_input(dropout: nn.Module) -> bool:
    """Whether a LoRA input dropout hands siblings the very same tensor (shared mask, or no dropout)."""
    if isinstance(dropout, InputDropout):
        return dropout.shared or dropout.p == 0
    return isinstance(dropout, nn.Identity) or (isinstance(dropout, nn.Dropout) and dropout.p == 0)


def use_input_dropout(model: nn.Module, shared: bool = True) -> int:
    """Swap peft's `nn.Dropout` on every LoRA adapter input for `InputDropout`; returns how many."""
    swapped = 0
    for module in model.modules():
        for name, drop in getattr(module, "lora_dropout", {}).items():
            if isinstance(drop, nn.Dropout):
                module.lora_dropout[name] = InputDropout(drop.p, shared)
                swapped += 1
    return swapped


def _fused_lora_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft `lora.Linear.forward` for one plain adapter: the update is added in place by one addmm.

    peft computes `result + lora_B(lora_A(dropout(x))) * scaling`, three activation-sized tensors
    per adapted layer; here `result.addmm_(a, B^T, alpha=scaling)` writes into the base output (its
    autograd node does not keep it). The base runs on the input flattened to 2-D rows, so that output
    is not a view: an in-place op on a view would make autograd copy the whole gradient (`CopySlices`).
    The same math and random draws; every other case (adapters disabled or merged, several adapters,
    DoRA, autocast, extra arguments) takes peft's own forward.
    """
    names = self.active_adapters
    name = names[0] if len(names) == 1 else None
    if (
        args
        or kwargs
        or name is None
        or self.disable_adapters
        or self.merged
        or name not in self.lora_A
        or name in self.lora_variant
        or self.lora_B[name].bias is not None
        or torch.is_autocast_enabled(x.device.type)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    rows = x.reshape(-1, x.shape[-1])  # 2-D: the in-place addmm below then hits a base tensor, not a view
    result = self.base_layer(rows)
    # the dropout sees `x` itself: its shared mask is keyed by the input tensor that siblings also get
    a = lora_a(self.lora_dropout[name](self._cast_input_dtype(x, lora_a.weight.dtype))).reshape(
        rows.shape[0], -1
    )
    result = lora_groups.add_update(result, a, lora_b.weight, self.scaling[name])
    return result.view(*x.shape[:-1], result.shape[-1])


def use_fused_lora_forward(model: nn.Module) -> int:
    """Give every peft `lora.Linear` of `model` `_fused_lora_forward`; returns how many."""
    from peft.tuners.lora import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = types.MethodType(_fused_lora_forward, module)
            count += 1
    return count


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under any peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if is_peft(model) else model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model without adapters (the DPO/KTO reference for LoRA); no-op without peft."""
    if is_peft(model):
        with model.disable_adapter():
            yield
    else:
        yield


def load_adapter(model: nn.Module, folder: str) -> nn.Module:
    """Wrap `model` with the PEFT adapter saved in `folder`."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder))


def merge(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and return the plain transformers model."""
    return model.merge_and_unload() if is_peft(model) else model


def add_neftune(model: nn.Module, alpha: float) -> torch.utils.hooks.RemovableHandle:
    """NEFTune (Jain et al. 2023): uniform noise of scale alpha/sqrt(L*d) on input embeddings in training."""
    embed = base_model(model).get_input_embeddings()

    def hook(module, args, output):
        if module.training:
            dims = output.shape[-2] * output.shape[-1]
            noise = torch.empty_like(output).uniform_(-1, 1) * (alpha / dims**0.5)
            output = output + noise
        return output

    return embed.register_forward_hook(hook)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
