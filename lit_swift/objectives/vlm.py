"""SFT of vision-language models (`AutoModelForImageTextToText`): images in, loss on the assistant text.

The model has three parts, named per family in `PARTS`: the vision tower, the aligner (projector) and the
language model (with its LM head). As in ms-swift, the tuner adapts the language model (LoRA targets only
its linear layers), the vision tower and the aligner are frozen by default, and each part can be frozen,
trained in full (saved and merged with a LoRA adapter as `modules_to_save`) and given its own learning rate.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from lit_swift import tuners
from lit_swift.data.collate import model_inputs
from lit_swift.data.multimodal import IMAGE_INPUTS
from lit_swift.objectives.sft import SFT

Part = Literal["vision", "aligner", "llm"]


@dataclass(frozen=True)
class Parts:
    """Module paths (in the HF model's own names) of the vision tower and the aligner; the rest is the LM."""

    vision: str
    aligner: str
    packing: bool
    """The forward passes 1-D `position_ids` to the language model, so packed rows attend per sample."""


PARTS: dict[str, Parts] = {
    "llava": Parts(vision="model.vision_tower", aligner="model.multi_modal_projector", packing=True),
    "llava_next": Parts(vision="model.vision_tower", aligner="model.multi_modal_projector", packing=False),
    "idefics3": Parts(vision="model.vision_model", aligner="model.connector", packing=False),
    "smolvlm": Parts(vision="model.vision_model", aligner="model.connector", packing=False),
    "qwen2_vl": Parts(vision="model.visual", aligner="model.visual.merger", packing=False),
    "qwen2_5_vl": Parts(vision="model.visual", aligner="model.visual.merger", packing=False),
}
"""Model type -> its parts. Qwen2-VL's aligner (the merger) sits inside its vision module: checked first."""


def part_of(name: str, parts: Parts) -> Part:
    """Which part a parameter or module name (HF, or with peft's prefixes) belongs to."""
    dotted = "." + name + "."
    if f".{parts.aligner}." in dotted:
        return "aligner"
    if f".{parts.vision}." in dotted:
        return "vision"
    return "llm"


class PartTuner(tuners.Tuner):
    """The user's tuner applied to the language model only, with the vision tower and aligner frozen or
    trained in full, and per-part learning rates.

    Args:
        inner: the tuner from the config (`LoRA`, `Full`, `Freeze`, ...).
        parts: the model family's part names.
        trainable: which of vision, aligner, llm may train.
        lrs: learning rate per part (absent: the optimizer's).
    """

    def __init__(self, inner: tuners.Tuner, parts: Parts, trainable: set[Part], lrs: dict[Part, float]):
        self.inner, self.parts, self.trainable, self.lrs = inner, parts, trainable, lrs

    @property
    def is_adapter(self) -> bool:
        return self.inner.is_adapter

    def load_kwargs(self) -> dict[str, Any]:
        return self.inner.load_kwargs()

    def apply(self, model: nn.Module, task_type: tuners.TaskType = "CAUSAL_LM") -> nn.Module:
        if isinstance(self.inner, tuners.LoRA):
            return self._lora(model, task_type)
        model = self.inner.apply(model, task_type)
        for name, param in model.named_parameters():
            if part_of(name, self.parts) not in self.trainable:
                param.requires_grad_(False)
        return model

    def _lora(self, model: nn.Module, task_type: tuners.TaskType) -> nn.Module:
        lora = copy.copy(self.inner)
        lora.target_modules = self.llm_targets(model) if "llm" in self.trainable else []
        full = [getattr(self.parts, p) for p in ("vision", "aligner") if p in self.trainable]
        if not lora.target_modules and "llm" in self.trainable:
            raise ValueError(
                f"LoRA target_modules {self.inner.target_modules!r} match no linear layer of the language model"
            )
        if not lora.target_modules:
            raise ValueError(
                "freeze_llm with a LoRA tuner leaves LoRA nothing to adapt (it adapts only the language "
                "model); use lit_swift.tuners.Full to train the unfrozen vision tower/aligner in full"
            )
        lora.modules_to_save = [*(self.inner.modules_to_save or []), *full]
        return lora.apply(model, task_type)

    def llm_targets(self, model: nn.Module) -> list[str]:
        """Full names of the language model's linear layers that the LoRA `target_modules` select."""
        wanted = self.inner.target_modules
        head = model.get_output_embeddings()
        names = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and m is not head and part_of(n, self.parts) == "llm"
        ]
        if wanted == "all-linear":
            return names
        if isinstance(wanted, str):
            return [n for n in names if re.fullmatch(wanted, n)]
        return [n for n in names if any(n == w or n.endswith("." + w) for w in wanted)]

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        groups, names = [], {id(p): n for n, p in model.named_parameters()}
        for group in self.inner.param_groups(model):
            by_part: dict[Part, list] = {}
            for p in group["params"]:
                by_part.setdefault(part_of(names[id(p)], self.parts), []).append(p)
            for part, params in by_part.items():
                extra = {"lr": self.lrs[part]} if part in self.lrs else {}
                groups.append({**group, "params": params, **extra, "part": part})
        return groups


class VLMSFT(SFT):
    """SFT of a vision-language model on `MultimodalDataModule` batches (LLaVA-style models are tested).

    Args:
        freeze_vision: keep the vision tower fixed (ms-swift's `freeze_vit`); False trains it in full.
        freeze_aligner: keep the projector between vision and language fixed; False trains it in full.
        freeze_llm: keep the language model fixed (no LoRA on it either: use the `Full` tuner).
        vision_lr: learning rate of the vision tower (default: the optimizer's).
        aligner_lr: learning rate of the aligner (default: the optimizer's).
        **kwargs: the arguments of `SFT` (model, tuner, optimizer, ...).
    """

    auto_class = "AutoModelForImageTextToText"

    def __init__(
        self,
        *args: Any,
        freeze_vision: bool = True,
        freeze_aligner: bool = True,
        freeze_llm: bool = False,
        vision_lr: float | None = None,
        aligner_lr: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.freeze = {"vision": freeze_vision, "aligner": freeze_aligner, "llm": freeze_llm}
        self.part_lrs = {k: v for k, v in (("vision", vision_lr), ("aligner", aligner_lr)) if v is not None}
        self.parts: Parts | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoConfig

        from lit_swift import models

        model_type = AutoConfig.from_pretrained(models.resolve(self.model_spec)).model_type
        if model_type not in PARTS:
            raise ValueError(
                f"{self.model_spec}: model type {model_type!r} has no known vision/aligner/LM split; "
                f"supported: {', '.join(sorted(PARTS))}"
            )
        self.parts = PARTS[model_type]
        trainable = {part for part, frozen in self.freeze.items() if not frozen}
        if not isinstance(self.tuner, PartTuner):
            self.tuner = PartTuner(self.tuner, self.parts, trainable, self.part_lrs)
        super().configure_model()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if getattr(self.trainer.datamodule, "packing", False) and not self.parts.packing:
            raise ValueError(
                f"packing: this model family ({self.model_spec}) builds its attention from more than 1-D "
                "position_ids, so packed rows would attend across samples; set data packing: false"
            )

    def hidden_states(self, batch: dict[str, Tensor]) -> Tensor:
        """Final hidden states with the images' features in place of the image tokens. # [B, T, H]"""
        return self.backbone(**model_inputs(batch), **batch.get(IMAGE_INPUTS, {})).last_hidden_state
