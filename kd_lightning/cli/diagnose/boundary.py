"""The one error boundary of both commands: strip ``--debug`` from the arguments, diagnose any error, print it once.

``kd-lightning`` and ``kd-lightning-export`` run their work inside :func:`error_boundary`: an error becomes one short
block on stderr (:func:`diagnose`), the traceback only with ``--debug`` / ``KD_LIGHTNING_DEBUG=1``, and the process
exits with 2 (refused before running), 1 (a run that failed) or 130 (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kd_lightning.cli.diagnose.diagnosis import (
    DEBUG_ENV,
    DEBUG_FLAG,
    INTERRUPT_EXIT,
    PROG,
    RUN_EXIT,
    USAGE_EXIT,
    Diagnosis,
)
from kd_lightning.cli.diagnose.exceptions import describe_exception, traceback_frames
from kd_lightning.cli.diagnose.parse_errors import describe_parse_error


def debug_requested(args: Sequence[str], environ: Mapping[str, str] = os.environ) -> tuple[list[str], bool]:
    """Remove :data:`DEBUG_FLAG` from ``args``; return the rest and whether the traceback was asked for."""
    rest = [arg for arg in args if arg != DEBUG_FLAG]
    from_env = environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    return rest, from_env or len(rest) != len(args)


def diagnose(error: BaseException, args: Sequence[str] = ()) -> Diagnosis:
    """Diagnose any error of a ``kd-lightning`` run; the CLI object is found in the traceback when it exists.

    Never raises: if the diagnosis itself fails, the block shows the exception's type and message.
    """
    try:
        return _diagnose(error, args)
    except Exception:
        exit_code = USAGE_EXIT if isinstance(error, argparse.ArgumentError) else RUN_EXIT
        return Diagnosis(f"{type(error).__name__}: {error}", exit_code=exit_code)


def _diagnose(error: BaseException, args: Sequence[str]) -> Diagnosis:
    if isinstance(error, KeyboardInterrupt):
        return Diagnosis("interrupted (Ctrl-C); stopped.", exit_code=INTERRUPT_EXIT)
    cli = _cli_in_traceback(error)
    if isinstance(error, argparse.ArgumentError):
        return _list_index_hint(describe_parse_error(str(error), getattr(cli, "parser", None), args))
    config = getattr(cli, "config", None)
    subcommand = getattr(cli, "subcommand", None) or (config.get("subcommand") if config is not None else None)
    if subcommand:
        config = config[subcommand]
    config_dict = config.as_dict() if hasattr(config, "as_dict") else config
    trainer_class = getattr(cli, "trainer_class", None)
    groups = {"trainer": trainer_class} if isinstance(trainer_class, type) else {}
    return describe_exception(error, config_dict, args, groups)


LIST_INDEX = re.compile(r"unrecognized arguments: --(\d+)\.")


def _list_index_hint(diagnosis: Diagnosis) -> Diagnosis:
    """``--model.init_args.terms.0.init_args.weight=...``: list items cannot be set one by one from the command line."""
    match = LIST_INDEX.search(diagnosis.message)
    if match is None or diagnosis.fix:
        return diagnosis
    fix = (
        f"the command line cannot set one item of a list (index {match.group(1)}): edit the YAML, or pass the whole "
        "list, e.g. --model.init_args.terms='[{class_path: kd_lightning.DistillTerm, init_args: {...}}]'"
    )
    return dataclasses.replace(diagnosis, fix=fix)


def _cli_in_traceback(error: BaseException) -> Any:
    """The ``LightningCLI`` whose ``__init__`` the error went through (it holds the parser and the parsed config)."""
    from lightning.pytorch.cli import LightningCLI

    for frame in traceback_frames(error.__traceback__):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, LightningCLI):
            return candidate
    return None


@contextlib.contextmanager
def error_boundary(args: Sequence[str], debug: bool, prog: str = PROG, exit_code: int | None = None) -> Iterator[None]:
    """Run the block; any error (Ctrl-C included, also when Lightning turned it into ``sys.exit(1)``) is printed once
    as a diagnosis headed ``prog:`` and ends the process with its exit code (``exit_code`` instead, when given and the
    error is not an interruption). ``--help`` and other ``SystemExit`` pass through."""
    try:
        yield
    except (Exception, KeyboardInterrupt, SystemExit) as error:
        interrupted = isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt)
        if isinstance(error, SystemExit) and not interrupted:
            raise
        cause = error.__context__ if interrupted else error
        diagnosis = diagnose(cause, args)
        if exit_code is not None and diagnosis.exit_code != INTERRUPT_EXIT:
            diagnosis.exit_code = exit_code
        sys.stdout.flush()
        if debug:
            traceback.print_exception(error)
        print(diagnosis.render(debug_hint=not debug).replace(f"{PROG}:", f"{prog}:", 1), file=sys.stderr)
        raise SystemExit(diagnosis.exit_code) from None
