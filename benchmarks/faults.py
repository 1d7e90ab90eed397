"""Run every user mistake of the catalogue (``tests/mistakes/cases_*.py``) and print what each produced, as a Markdown
table.

Each mistake runs in a scratch copy of the project (``checkpoints/`` included), as a user would run it: the command
line through ``kd_lightning.cli.command`` (exit code and the first line of the message), the Python calls directly (the
exception and its first line). The table in ``benchmarks/README.md`` is this script's output.

    python benchmarks/faults.py > faults.md
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

import importlib  # noqa: E402

from mistakes import catalogue  # noqa: E402

CASE_FILES = [
    importlib.import_module(f"mistakes.{path.stem}") for path in sorted((ROOT / "tests/mistakes").glob("cases_*.py"))
]
CLI_MISTAKES = [case for module in CASE_FILES for case in getattr(module, "CLI_MISTAKES", [])]
API_MISTAKES = [case for module in CASE_FILES for case in getattr(module, "API_MISTAKES", [])]

from kd_lightning.cli import main  # noqa: E402

WIDTH = 150


def first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.removeprefix("kd-lightning: error: ").replace("|", "\\|")
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


def run_cli(mistake: catalogue.CliMistake, scratch: Path) -> tuple[str, str]:
    stderr = io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        args = mistake.args(scratch)  # may run an earlier fit (the resume mistakes)
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exited:
            code = exited.code
    block = stderr.getvalue()
    start = block.find("kd-lightning: error")
    return f"exit {code}", first_line(block[start:] if start >= 0 else block)


def run_api(mistake: catalogue.ApiMistake, scratch: Path) -> tuple[str, str]:
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            mistake.run({"tmp": scratch})
        except Exception as error:  # the outcome being tabulated
            return type(error).__name__, first_line(str(error))
    return "no error", ""


def main_table() -> None:
    os.environ.pop("KD_LIGHTNING_DEBUG", None)
    print("| kind | mistake | outcome | message (first line) |")
    print("|---|---|---|---|")
    for kind, mistakes, run in (
        ("command line", CLI_MISTAKES, run_cli),
        ("Python", API_MISTAKES, run_api),
    ):
        for mistake in mistakes:
            with tempfile.TemporaryDirectory() as folder:
                scratch = Path(folder)
                shutil.copytree(ROOT / "checkpoints", scratch / "checkpoints")
                previous = Path.cwd()
                os.chdir(scratch)
                try:
                    outcome, message = run(mistake, scratch)
                finally:
                    os.chdir(previous)
            print(f"| {kind} | {mistake.name} | {outcome} | {message} |", flush=True)


if __name__ == "__main__":
    main_table()
