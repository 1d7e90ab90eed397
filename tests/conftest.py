"""Shared fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import ROOT


@pytest.fixture
def in_project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary directory holding a copy of ``checkpoints/``, so relative config paths resolve there."""
    shutil.copytree(ROOT / "checkpoints", tmp_path / "checkpoints")
    monkeypatch.chdir(tmp_path)
    return tmp_path
