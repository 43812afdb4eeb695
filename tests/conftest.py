"""Shared test fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers: videofiles, rar4


@pytest.fixture(autouse=True)
def _no_hmdbattn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the environment variables they set themselves."""
    import os

    for name in list(os.environ):
        if name.startswith("HMDBATTN_"):
            monkeypatch.delenv(name)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
