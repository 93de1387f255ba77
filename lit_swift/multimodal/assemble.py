"""Assemble a LLaVA-style vision-language model offline: a language model + a SigLIP vision tower + a projector.

No vision-language checkpoint can be downloaded here, so the built-in alias `llava-smollm2-tiny` joins the
embedded SmolLM2-135M-Instruct (weights kept) to a compact SigLIP vision encoder and a 2-layer MLP projector
(both initialised from a fixed seed, to be trained), and adds an `<image>` token. The result is a standard
transformers folder: `AutoModelForImageTextToText` and `AutoProcessor` reload it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class VisionSpec:
    """A compact SigLIP vision tower: `(image_size / patch_size)^2` image tokens per image.

    Args:
        image_size: side of the square input the image processor resizes to.
        patch_size: side of one patch (one image token).
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads: encoder shape.
        seed: initialises the vision tower and the projector.
    """

    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 192
    intermediate_size: int = 384
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def assemble_llava(language_model: str, out: str | Path, vision: VisionSpec | None = None) -> Path:
    """Write a LLaVA folder joining `language_model` (alias or folder) to a fresh SigLIP tower and projector.

    Args:
        language_model: spec of a causal LM with a chat template (e.g. `smollm2-135m-instruct`).
        out: folder to write (model, tokenizer with `<image>`, image processor, processor).
        vision: the vision tower's shape; the default gives 16 image tokens for 32x32 images.
    """
    from transformers import (
        AutoModelForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        SiglipVisionConfig,
    )

    from lit_swift import models

    vision = vision or VisionSpec()
    torch.manual_seed(vision.seed)  # the new `<image>` embedding row, the vision tower and the projector
    tokenizer = _tokenizer_with_image_token(models.resolve(language_model))
    lm = AutoModelForCausalLM.from_pretrained(models.resolve(language_model), dtype=torch.float32)
    vision_config = SiglipVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        **vision.extra,
    )
    text_config = lm.config
    text_config.vocab_size = len(tokenizer)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="full",  # SigLIP has no CLS token to drop
        vision_feature_layer=-1,
        image_seq_length=vision.num_image_tokens,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, getattr(text_config, key))
    model = LlavaForConditionalGeneration(config)
    _copy_language_model(model, lm, len(tokenizer))
    model.generation_config.update(**lm.generation_config.to_diff_dict())
    out = Path(out)
    model.save_pretrained(str(out))
    _processor(tokenizer, vision).save_pretrained(str(out))
    return out


def build_alias(out: Path) -> None:
    """The built-in alias `llava-smollm2-tiny`: SmolLM2-135M-Instruct + the default `VisionSpec`."""
    assemble_llava("smollm2-135m-instruct", out)


def _tokenizer_with_image_token(folder: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


def _copy_language_model(model, lm, vocab_size: int) -> None:
    """Load the LM's weights into the LLaVA model; the new `<image>` row starts at the mean embedding."""
    lm.resize_token_embeddings(vocab_size, mean_resizing=True)
    missing, unexpected = model.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    if not model.config.tie_word_embeddings:
        model.lm_head.load_state_dict(lm.lm_head.state_dict())


def _processor(tokenizer, vision: VisionSpec):
    from transformers import LlavaProcessor, SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(
        size={"height": vision.image_size, "width": vision.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        image_token=IMAGE_TOKEN,
        chat_template=tokenizer.chat_template,
    )
