"""Shared fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import ROOT

from kd_lightning.cli.export import main as export_main


@pytest.fixture
def in_project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary directory holding a copy of ``checkpoints/``, so relative config paths resolve there."""
    shutil.copytree(ROOT / "checkpoints", tmp_path / "checkpoints")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (small models on shared cores run far faster), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_export(capsys, one_torch_thread):
    """Run ``kd-lightning-export`` in-process (one torch thread): ``run(*args) -> (exit code, stdout, stderr)``."""

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            export_main([str(arg) for arg in args])
            code = 0
        except SystemExit as stop:
            code = int(stop.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
