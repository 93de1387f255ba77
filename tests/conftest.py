"""Shared test setup: offline hub, temp encoded-row cache, session-scoped SmolLM2 pieces (2 real layers)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from lit_swift import models  # noqa: E402
from lit_swift.data import encode_cache  # noqa: E402

SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="session", autouse=True)
def _session_encoded_cache(tmp_path_factory):
    """Encoded-row cache files of session- and module-scoped fixtures go to a temp folder, not ~/.cache.

    Only the encoded rows move: the materialised model stays in `$LIT_SWIFT_CACHE/models`.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(encode_cache.FOLDER_ENV, str(tmp_path_factory.mktemp("encoded")))
        yield


@pytest.fixture(autouse=True)
def _encoded_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own empty encoded-row cache, so no test reads rows another test encoded."""
    monkeypatch.setenv(encode_cache.FOLDER_ENV, str(tmp_path_factory.mktemp("encoded")))


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
