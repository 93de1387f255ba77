"""Shared test setup: offline hub, and session-scoped real SmolLM2 pieces (2 real layers)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from lit_swift import models  # noqa: E402

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The materialised SmolLM2 folder (built once per cache, then reused)."""
    return models.resolve(SMOLLM2)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    return models.load_tokenizer(SMOLLM2)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
