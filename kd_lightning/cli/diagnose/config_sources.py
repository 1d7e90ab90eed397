"""Config paths and their sources: a path's dotted form, its value in a config, and which ``--config`` file or
command-line option sets it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

Segment = str | int | tuple[int, ...]
"""One step of a config path: a key, a list index, or several candidate indices when the item is ambiguous."""


class _Unknown:
    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()
"""The value of a field that the config or the message does not give (``None`` is a value)."""


def dotted(segments: Sequence[Segment]) -> str:
    """The path as shown: ``model.init_args.terms[0]``, ``terms[0 or 1]`` for ambiguous items."""
    text = ""
    for segment in segments:
        if isinstance(segment, tuple):
            text += f"[{' or '.join(map(str, segment))}]" if segment else "[?]"
        elif isinstance(segment, int):
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


def config_files(args: Sequence[str]) -> list[str]:
    """The ``--config`` files of the command line, in order."""
    return [name for kind, name, _ in _arg_sources(args) if kind == "config"]


def _arg_sources(args: Sequence[str]) -> Iterator[tuple[str, str, Any]]:
    """``("config", path, None)`` per ``--config``/``-c`` file, ``("option", key, value)`` per ``--key``, in order."""
    tokens = list(args)
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token in ("--config", "-c") and following is not None:
            yield "config", following, None
        elif token.startswith("--config="):
            yield "config", token.split("=", 1)[1], None
        elif token.startswith("--") and len(token) > 2:
            key, _, value = token[2:].partition("=")
            if not value and following is not None and not following.startswith("-"):
                value = following
            yield "option", key.rstrip("+"), value if value else UNKNOWN


def _plain_keys(segments: Sequence[Segment]) -> list[str]:
    return [s for s in segments if isinstance(s, str) and s != "init_args"]


def config_source(segments: Sequence[Segment], args: Sequence[str], value: Any = UNKNOWN) -> str | None:
    """Which argument sets the field at ``segments``: a ``--config`` file, or ``"command line"`` for an option.

    The last one that sets it wins, as when parsing; given the failing ``value``, the last one that sets it to that
    value (a bad value fails when its file is loaded, even if a later option would override it).
    """
    setters: list[tuple[str, Any]] = []
    plain = _plain_keys(segments)
    for kind, name, given in _arg_sources(args):
        if kind == "config":
            found = lookup(_load_yaml(name), segments)
            if found is not UNKNOWN:
                setters.append((name, found))
        elif (keys := _plain_keys(name.split("."))) and plain[: len(keys)] == keys:
            setters.append(("command line", given if keys == plain else UNKNOWN))
    if value is not UNKNOWN:
        same = [source for source, found in setters if found is not UNKNOWN and same_value(found, value)]
        if same:
            return same[-1]
    return setters[-1][0] if setters else None


def config_value(segments: Sequence[Segment], args: Sequence[str]) -> Any:
    """The value at ``segments`` in the last config file that has it (a fallback when the message has no value)."""
    value = UNKNOWN
    for path in config_files(args):
        found = lookup(_load_yaml(path), segments)
        value = value if found is UNKNOWN else found
    return value


def _load_yaml(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None


def lookup(data: Any, segments: Sequence[Segment]) -> Any:
    """The value at ``segments`` in a config dict, or :data:`UNKNOWN`."""
    node = data
    for segment in segments:
        if isinstance(segment, tuple):
            segment = segment[0] if segment else 0
        if isinstance(segment, int):
            if not isinstance(node, list) or segment >= len(node):
                return UNKNOWN
            node = node[segment]
        elif isinstance(node, dict) and segment in node:
            node = node[segment]
        elif segment != "init_args" or not isinstance(node, dict):  # init args may sit beside class_path
            return UNKNOWN
    return node


def same_value(a: Any, b: Any) -> bool:
    """Equal as numbers when both read as numbers (``-1`` and ``"-1.0"``), else as text."""
    if not isinstance(a, bool) and not isinstance(b, bool):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            pass
    return str(a) == str(b)
