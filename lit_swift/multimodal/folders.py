"""What export and inference need to know about a vision-language model folder: its class and its processor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lit_swift import models

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def is_vision_language(spec: str) -> bool:
    """Whether the model spec's config has a vision part (a LLaVA-, Idefics3- or Qwen2-VL-style model)."""
    config = Path(models.resolve(spec)) / "config.json"
    return config.exists() and "vision_config" in json.loads(config.read_text())


def model_class(spec: str) -> Any:
    """`AutoModelForImageTextToText` for a vision-language spec, else None (the causal-LM default)."""
    if not is_vision_language(spec):
        return None
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText


def save_processor(spec: str | None, out: Path) -> bool:
    """Write `spec`'s processor (image processor, processor config) into `out` when it has one."""
    if spec is None:
        return False
    try:
        folder = Path(models.resolve(spec))
    except ValueError:
        return False
    if not any((folder / name).exists() for name in PROCESSOR_FILES):
        return False
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(str(folder)).save_pretrained(str(out))
    return True
