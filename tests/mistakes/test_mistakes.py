"""Run the one catalogue of user mistakes (``cases_*.py`` in this folder; see :mod:`mistakes.catalogue`)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from helpers import ROOT
from mistakes.catalogue import MAX_LINES, ApiMistake, CliMistake, error_block, file_hashes

from kd_lightning.cli import main

CASE_FILES = [
    importlib.import_module(f"mistakes.{path.stem}") for path in sorted(Path(__file__).parent.glob("cases_*.py"))
]
CLI_MISTAKES: list[CliMistake] = [case for module in CASE_FILES for case in getattr(module, "CLI_MISTAKES", [])]
API_MISTAKES: list[ApiMistake] = [case for module in CASE_FILES for case in getattr(module, "API_MISTAKES", [])]
DEBUG_ENV = "KD_LIGHTNING_DEBUG"


def run(args: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, debug: bool) -> tuple:
    """``kd-lightning`` in-process: its exit code and stderr."""
    if debug:
        monkeypatch.setenv(DEBUG_ENV, "1")
    else:
        monkeypatch.delenv(DEBUG_ENV, raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("mistake", CLI_MISTAKES, ids=lambda m: m.name)
def test_cli_mistake_stops_with_one_clear_message_and_changes_nothing(mistake, in_project_copy, capsys, monkeypatch):
    project = in_project_copy
    args = mistake.args(project)
    before = file_hashes(project, ROOT / "checkpoints")
    existing_checkpoints = set(project.rglob("*.ckpt"))
    code, stderr = run(args, capsys, monkeypatch, debug=False)
    assert code not in (0, None)
    if mistake.exit_code is not None:
        assert code == mistake.exit_code, stderr
    block = error_block(stderr)
    assert len(block) <= MAX_LINES, "\n".join(block)
    assert "Traceback" not in stderr
    message = "\n".join(block)
    for words in mistake.expect:
        assert words in message, f"{words!r} not in:\n{message}"
    assert f"set {DEBUG_ENV}=1" in message
    assert set(project.rglob("*.ckpt")) == existing_checkpoints, "a checkpoint was written: an optimizer step ran"
    after = file_hashes(project, ROOT / "checkpoints")
    assert {path: after.get(path) for path in before} == before, "a file that existed before was changed"
    if mistake.once is not None:
        assert stderr.count(mistake.once) == 1, stderr
        debug_code, debug_err = run(mistake.args(project), capsys, monkeypatch, debug=True)
        assert debug_code == code and "Traceback (most recent call last)" in debug_err
        assert debug_err.count("kd-lightning: error:") == 1 and f"set {DEBUG_ENV}=1" not in debug_err


@pytest.mark.parametrize("mistake", API_MISTAKES, ids=lambda m: m.name)
def test_python_mistake_raises_one_clear_message_before_any_step(mistake, tmp_path):
    record: dict = {"tmp": tmp_path}
    before = file_hashes(ROOT / "checkpoints")
    with pytest.raises(mistake.error) as raised:
        mistake.run(record)
    message = str(raised.value)
    assert len(message.splitlines()) <= MAX_LINES
    for words in mistake.expect:
        assert words in message, f"{words!r} not in: {message}"
    if "trainer" in record:
        assert record["trainer"].global_step == 0
    assert file_hashes(ROOT / "checkpoints") == before


def test_the_catalogue_holds_at_least_a_hundred_distinct_mistakes():
    names = [m.name for m in [*CLI_MISTAKES, *API_MISTAKES]]
    assert len(names) >= 100, len(names)
    assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)
    assert all(re.fullmatch(r"[\w' =.\-/,()+:]+", name) for name in names)
