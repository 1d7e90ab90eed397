"""Parse errors: a rejected command line or config (``argparse.ArgumentError``) as a :class:`Diagnosis`, from the
one-line argparse errors or else the jsonargparse message tree."""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kd_lightning.cli.diagnose.config_sources import config_files, config_value
from kd_lightning.cli.diagnose.diagnosis import PROG, USAGE_EXIT, Diagnosis
from kd_lightning.cli.diagnose.imports import import_path
from kd_lightning.cli.diagnose.message_tree import describe_tree

CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".jsonnet")


def describe_parse_error(
    message: str, parser: argparse.ArgumentParser | None = None, args: Sequence[str] = ()
) -> Diagnosis:
    """Turn a jsonargparse error message into the failing config path, its innermost message and a suggestion.

    Args:
        message: ``str()`` of the ``ArgumentError`` (the nested ``Parser key ...`` tree or a one-line argparse error).
        parser: the main parser (for option names and subcommands); without it, fewer suggestions are made.
        args: the command-line arguments (to find the subcommand, the ``--config`` files and what sets a field).
    """
    args = list(args)
    parser = _subcommand_parser(parser, args) or parser
    one_line = (
        _unrecognized,
        _invalid_subcommand,
        _missing_subcommand,
        _missing_file,
        _yaml_syntax,
        _not_a_mapping,
        _required,
    )
    found = (describe(message, parser, args) for describe in one_line)
    diagnosis = next((d for d in found if d is not None), None) or describe_tree(message, parser, args)
    diagnosis.exit_code = USAGE_EXIT
    return diagnosis


def _subcommand_parser(parser: Any, args: Sequence[str]) -> Any:
    choices = getattr(getattr(parser, "_subcommands_action", None), "choices", None) or {}
    return next((choices[arg] for arg in args if arg in choices), None)


def _option_strings(parser: Any) -> list[str]:
    options = [s for action in getattr(parser, "_actions", ()) for s in action.option_strings]
    return [s for s in options if s.startswith("--") and not s.endswith((".help", "+"))]


def _looks_like_config(token: str) -> bool:
    return token.endswith(CONFIG_SUFFIXES) or (not token.startswith("-") and Path(token).is_file())


def _command(args: Sequence[str]) -> str:
    subcommand = next((arg for arg in args if arg in ("fit", "validate", "test", "predict")), "fit")
    return f"{PROG} {subcommand}"


def _unrecognized(message: str, parser: Any, args: Sequence[str]) -> Diagnosis | None:
    match = re.fullmatch(r"unrecognized arguments: (.*)", message.strip(), re.DOTALL)
    if match is None:
        return None
    tokens = match.group(1).split()
    config = next((t for t in tokens if not t.startswith("-") and _looks_like_config(t)), None)
    if config is not None:
        return Diagnosis(
            f"unexpected argument {config!r}: a config file is passed with --config.",
            fix=f"`{_command(args)} --config {config}`",
        )
    flags = [t.split("=", 1)[0] for t in tokens if t.startswith("-")]
    options = _option_strings(parser)
    hints = []
    for flag in flags:
        nearest = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
        if nearest:
            hints.append(f"did you mean {nearest[0]!r} for {flag!r}?")
    help_hint = f"`{_command(args)} --help` lists every option"
    return Diagnosis(
        f"unrecognized arguments: {' '.join(tokens)}",
        where="command line",
        fix=" ".join([*hints, f"({help_hint})" if hints else help_hint]),
    )


def _invalid_subcommand(message: str, parser: Any, args: Sequence[str]) -> Diagnosis | None:
    match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if match is None:
        return None
    given, choices = match.group(1), re.findall(r"'([^']*)'", match.group(2))
    if _looks_like_config(given):
        return Diagnosis(
            f"{given!r} is not a subcommand: the subcommand comes first and a config file is passed with --config.",
            fix=f"`{PROG} fit --config {given}`",
        )
    nearest = difflib.get_close_matches(given, choices, n=1, cutoff=0.5)
    fix = f"did you mean {nearest[0]!r}?" if nearest else f"use one of {', '.join(choices)}"
    return Diagnosis(f"unknown subcommand {given!r} (choose from {', '.join(choices)})", fix=fix)


def _missing_subcommand(message: str, parser: Any, args: Sequence[str]) -> Diagnosis | None:
    match = re.search(r'expected "subcommand" to be one of \{([^}]*)\}', message)
    if match is None:
        return None
    config = config_files(args)
    example = f"--config {config[-1]}" if config else "--config configs/digits/offline_kd.yaml"
    return Diagnosis(
        f"no subcommand given; expected one of {match.group(1).replace(',', ', ')} first.",
        fix=f"`{PROG} fit {example}`",
    )


def _missing_file(message: str, parser: Any, args: Sequence[str]) -> Diagnosis | None:
    match = re.search(r"File does not exist: '([^']*)'", message)
    if match is None:
        return None
    missing = Path(match.group(1))
    given = next((arg for arg in args if _same_file(arg, missing)), str(missing))
    key = re.match(r'Parser key "([^"]*)"', message)
    what = "config file" if key is None or key.group(1) == "config" else f"file for {key.group(1)}"
    nearest = _nearest_file(missing)
    fix = f"did you mean {nearest!r}?" if nearest else "paths are relative to the working directory"
    return Diagnosis(f"{what} {given!r} not found (working directory {str(Path.cwd())!r}).", fix=fix)


def _same_file(arg: str, path: Path) -> bool:
    candidate = arg.split("=", 1)[-1]
    return bool(candidate) and not candidate.startswith("-") and Path(candidate).absolute() == path.absolute()


def _nearest_file(missing: Path) -> str | None:
    folder = missing.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return None
    files = [str(p) for p in [*folder.glob("*"), *folder.glob("*/*")] if p.suffix in CONFIG_SUFFIXES]
    nearest = difflib.get_close_matches(str(missing), files, n=1, cutoff=0.8)
    return os.path.relpath(nearest[0]) if nearest else None


def _yaml_syntax(message: str, parser: Any, args: Sequence[str]) -> Diagnosis | None:
    if not message.startswith("Problems parsing config"):
        return None
    for path in config_files(args):
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            position = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            return Diagnosis(
                f"config file {path!r} is not valid YAML: {problem}{position}",
                where=f"{path}{line}",
                fix="fix the YAML syntax there (unclosed brackets or quotes, tabs, a missing ': ')",
            )
        except OSError:
            continue
    return Diagnosis(message.replace('"<unicode string>"', "the command line"), where="command line")


def _not_a_mapping(message: str, parser: Any, args: Sequence[str]) -> Diagnosis | None:
    """A config file that is empty (or only comments), or whose YAML is a list or a text instead of settings."""
    if not message.startswith("Unexpected config"):
        return None
    for path in config_files(args):
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(content, dict):
            continue
        kind = "list" if isinstance(content, list) else "value"
        holds = (
            "no settings (it is empty, or holds only comments)"
            if content is None
            else f"a YAML {kind} ({str(content)[:40]!r}), not a mapping of settings"
        )
        return Diagnosis(
            f"config file {path!r} holds {holds}.",
            where=path,
            fix="a config maps the run's parts to their settings (trainer: {...}, model: {class_path: ..., "
            "init_args: {...}}, data: {...}); start from a recipe, e.g. cp configs/digits/offline_kd.yaml "
            f"{path}, or drop --config {path}",
        )
    return None


def _required(message: str, parser: Any, args: Sequence[str]) -> Diagnosis | None:
    match = re.search(r"the following arguments are required: (.*)", message)
    if match is None:
        return None
    keys = [key.strip().split(".", 1)[-1] for key in match.group(1).split(",")]
    model = _model_class(args)
    described = [(key, _parameter_doc(model, key.rsplit(".", 1)[-1])) for key in keys] if model else []
    if described and all(doc for _, doc in described):
        settings = "; ".join(f"model.init_args.{key.rsplit('.', 1)[-1]}: {doc}" for key, doc in described)
        return Diagnosis(
            f"missing required settings of {model.__name__}: {', '.join(keys)}",
            fix=f"set them in the config: {settings}",
        )
    return Diagnosis(
        f"missing required settings: {', '.join(keys)}",
        fix=f"pass a config that sets them: `{_command(args)} --config configs/digits/offline_kd.yaml`",
    )


def _model_class(args: Sequence[str]) -> type | None:
    """The class the config's ``model.class_path`` names, when it imports."""
    path = config_value(["model", "class_path"], args)
    target = import_path(path) if isinstance(path, str) else None
    return target if inspect.isclass(target) else None


def _parameter_doc(cls: type, name: str) -> str | None:
    """The ``Args:`` entry of ``name`` in the docstrings of ``cls`` and its bases (Google style), on one line."""
    for owner in inspect.getmro(cls):
        lines = (owner.__doc__ or "").splitlines()
        for index, line in enumerate(lines):
            if line.strip().startswith(f"{name}:"):
                text = [line.strip()[len(name) + 1 :].strip()]
                indent = len(line) - len(line.lstrip())
                for follow in lines[index + 1 :]:
                    if not follow.strip() or len(follow) - len(follow.lstrip()) <= indent:
                        break
                    text.append(follow.strip())
                return " ".join(text).replace("``", "")
    return None
