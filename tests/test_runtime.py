"""runtime.fix_mmap_threshold: opt-in, applied through glibc's mallopt."""

from __future__ import annotations

import sys

import pytest

from lit_swift import runtime


def test_default_leaves_glibc_alone(monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    assert runtime.fix_mmap_threshold() is False
    assert runtime.fix_mmap_threshold(0) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_env_threshold_is_applied(monkeypatch):
    monkeypatch.setenv(runtime.ENV, str(1 << 20))
    assert runtime.fix_mmap_threshold() is True
    assert runtime.fix_mmap_threshold(32 << 20) is True  # back to glibc's adaptive ceiling
