"""Exceptions raised while instantiating the config or running: the original error, the configured object whose
constructor raised it, the failing field, and the last frame of kd_lightning or user code."""

from __future__ import annotations

import inspect
import re
import sysconfig
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kd_lightning.cli.diagnose.config_sources import Segment, config_source, dotted, lookup, same_value
from kd_lightning.cli.diagnose.diagnosis import RUN_EXIT, USAGE_EXIT, Diagnosis
from kd_lightning.cli.diagnose.imports import import_path

_PACKAGE_DIR = Path(__file__).resolve().parents[2]
_CLI_DIR = Path(__file__).resolve().parents[1]
_BOUNDARY_FILES = {str(path) for pattern in ("*.py", "diagnose/*.py") for path in _CLI_DIR.glob(pattern)}
_LIBRARY_DIRS = tuple(
    {str(Path(p).resolve()) for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_path(key))}
)


def describe_exception(
    error: BaseException,
    config: Mapping[str, Any] | None = None,
    args: Sequence[str] = (),
    groups: Mapping[str, type] | None = None,
) -> Diagnosis:
    """Diagnose an error raised while instantiating the config or while running.

    Args:
        error: the exception that reached the boundary (jsonargparse wrappers are unwrapped to the original).
        config: the parsed config of the subcommand as a plain dict (``class_path``/``init_args`` nodes), if any.
        args: the command-line arguments (to find the ``--config`` file that sets the failing field).
        groups: config keys built from a class without ``class_path``, e.g. ``{"trainer": Trainer}``.
    """
    original = unwrap(error)
    frames = list(traceback_frames(original.__traceback__))
    message = str(original).strip()
    raised_in_library = bool(frames) and _is_library(frames[-1].f_code.co_filename)
    diagnosis = Diagnosis(message or type(original).__name__)
    if raised_in_library or not message:
        diagnosis.message = f"{type(original).__name__}: {message}" if message else type(original).__name__
        diagnosis.at = _last_own_frame(iter(frames)) or _last_own_frame(traceback_frames(error.__traceback__))
    ran = any(frame.f_code.co_name == "_run_subcommand" for frame in traceback_frames(error.__traceback__))
    diagnosis.exit_code = RUN_EXIT if ran else USAGE_EXIT
    if config:
        where = _failing_node(frames, config, groups or {})
        if where:
            node_path, node = where[0]
            segments = (_field(message, node, node_path) if len(where) == 1 else None) or node_path
            diagnosis.where = " or ".join(dotted(path) for path, _ in where) if len(where) > 1 else dotted(segments)
        else:  # raised outside any configured constructor: a `name=value` or a quoted value that one field sets
            nodes = _config_nodes(config, groups or {})
            named = [field for path, node, _ in nodes if (field := _named_field(message, node, path))]
            segments = named[0] if len(named) == 1 else _quoted_field(message, _leaves(config, []))
            diagnosis.where = dotted(segments) if segments else None
        if diagnosis.where and segments:
            diagnosis.source = config_source(segments, args, lookup(config, segments))
    return diagnosis


def unwrap(error: BaseException) -> BaseException:
    """Follow ``__cause__``/``__context__`` past the exceptions that jsonargparse raised around the original one."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        frames = list(traceback_frames(error.__traceback__))
        inner = error.__cause__ or error.__context__
        if inner is None or not frames or "jsonargparse" not in Path(frames[-1].f_code.co_filename).parts:
            return error
        error = inner
    return error


def traceback_frames(tb: types.TracebackType | None) -> Iterator[types.FrameType]:
    """The frames of a traceback, outermost first."""
    while tb is not None:
        yield tb.tb_frame
        tb = tb.tb_next


def _is_library(filename: str) -> bool:
    """Whether a frame's file belongs to Python or an installed package (not kd_lightning, not the user's code)."""
    if filename.startswith("<"):
        return True
    path = Path(filename).resolve()
    return not path.is_relative_to(_PACKAGE_DIR) and str(path).startswith(_LIBRARY_DIRS)


def _last_own_frame(frames: Iterator[types.FrameType]) -> str | None:
    """``file:line in function`` of the innermost frame in kd_lightning or user code (not the boundary itself)."""
    own = [f for f in frames if not _is_library(f.f_code.co_filename) and f.f_code.co_filename not in _BOUNDARY_FILES]
    if not own:
        return None
    frame = own[-1]
    path = Path(frame.f_code.co_filename)
    shown = path.relative_to(_PACKAGE_DIR.parent) if path.is_relative_to(_PACKAGE_DIR.parent) else path
    return f"{shown}:{frame.f_lineno} in {frame.f_code.co_name}"


def _class_nodes(config: Any, path: list[Segment]) -> Iterator[tuple[list[Segment], dict[str, Any]]]:
    if isinstance(config, dict):
        if isinstance(config.get("class_path"), str):
            yield path, config
        for key, value in config.items():
            yield from _class_nodes(value, [*path, key])
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from _class_nodes(value, [*path, index])


def _config_nodes(
    config: Mapping[str, Any], groups: Mapping[str, type]
) -> list[tuple[list[Segment], dict[str, Any], type | None]]:
    """Every ``class_path`` node (class ``None``: import it) and every group built without one (its class given)."""
    nodes: list[tuple[list[Segment], dict[str, Any], type | None]] = [
        (path, node, None) for path, node in _class_nodes(dict(config), [])
    ]
    nodes += [
        ([key], {"init_args": config[key]}, cls) for key, cls in groups.items() if isinstance(config.get(key), dict)
    ]
    return nodes


def _failing_node(
    frames: list[types.FrameType], config: Mapping[str, Any], groups: Mapping[str, type]
) -> list[tuple[list[Segment], dict[str, Any]]]:
    """The config nodes whose object was being built in the innermost matching constructor frame."""
    nodes = [(path, node, cls or import_path(node["class_path"])) for path, node, cls in _config_nodes(config, groups)]
    for frame in reversed(frames):
        built = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        created = frame.f_locals.get("cls") if frame.f_code.co_name == "__new__" else None  # an entry-point class
        matches = [
            (path, node)
            for path, node, target in nodes
            if target is not None
            and (
                (built is not None and type(built) is target)
                or (created is not None and created is target)
                or getattr(target, "__code__", None) is frame.f_code
            )
        ]
        if matches:
            values = inspect.getargvalues(frame).locals
            same = [(path, node) for path, node in matches if _same_arguments(node, values)]
            return same or matches
    return []


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _same_arguments(node: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    init_args = node.get("init_args") or {}
    return all(
        same_value(value, values[key])
        for key, value in init_args.items()
        if key in values and _is_scalar(value) and _is_scalar(values[key])
    )


def _field(message: str, node: Mapping[str, Any], node_path: list[Segment]) -> list[Segment] | None:
    """The init arg that the message names: ``name=value`` first, then a quoted value, then a number, if unique."""
    init_args = node.get("init_args") or {}
    named = _named_field(message, node, node_path)
    if named:
        return named
    quoted = _quoted_field(message, _leaves(init_args, []))
    if quoted:
        return [*node_path, "init_args", *quoted]
    numbers = {float(n) for n in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])", message)}
    numeric = [
        name
        for name, value in init_args.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) in numbers
    ]
    return [*node_path, "init_args", numeric[0]] if len(numeric) == 1 else None


def _named_field(message: str, node: Mapping[str, Any], node_path: list[Segment]) -> list[Segment] | None:
    """The init arg of ``node`` that the message names as ``name=value`` with the value the config gives it."""
    init_args = node.get("init_args") or {}
    named = {
        name
        for name, value in re.findall(r"\b([A-Za-z_]\w*)=([^\s,;()]+)", message)
        if name in init_args and _is_scalar(init_args[name]) and same_value(init_args[name], value.rstrip(".:"))
    }
    return [*node_path, "init_args", named.pop()] if len(named) == 1 else None


def _quoted_field(message: str, leaves: Iterator[tuple[list[Segment], Any]]) -> list[Segment] | None:
    """The path of the first value quoted in the message (``'layer9'``) that exactly one string field holds."""
    strings = [(path, value) for path, value in leaves if isinstance(value, str)]
    for quoted in dict.fromkeys(re.findall(r"'([^']+)'", message)):
        paths = [path for path, value in strings if value == quoted]
        if len(paths) == 1:
            return paths[0]
    return None


def _leaves(value: Any, path: list[Segment]) -> Iterator[tuple[list[Segment], Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "class_path":
                yield from _leaves(item, [*path, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, [*path, index])
    else:
        yield path, value
