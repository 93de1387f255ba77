"""Which weights train: full, freeze, LoRA/DoRA/rsLoRA/LoRA+ and QLoRA; the only module importing peft.

A tuner is picked in YAML by `class_path` (e.g. `lit_swift.tuners.LoRA`) and applied to a loaded
model by the objective; it also supplies optimizer parameter groups (LoRA+ gives B matrices their
own learning rate) and any extra `from_pretrained` arguments (QLoRA's 4-bit loading).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from typing import Any, Literal

import torch
from torch import nn

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
    ):
        self.r, self.alpha, self.dropout = r, alpha, dropout
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

        return get_peft_model(model, self.peft_config(task_type))

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
