"""The one defensive loader of every file the library reads.

:func:`read_checkpoint` (a Lightning ``.ckpt`` or any ``torch.save`` file) and :func:`read_tensors` (a
state dict: ``.safetensors``, ``.pt``/``.pth``/``.bin`` or the ``state_dict`` of a ``.ckpt``) load with
``weights_only=True`` on the CPU. Whatever is wrong with the file, the error is a :class:`CheckpointFileError` that
names it (as given, with the working directory when relative) and says which fault it is (``reason``): missing, not
a file, unreadable, empty, truncated, corrupt (an HTML page saved by a download link, garbage bytes), not a
checkpoint (no tensors, or not the expected keys) or unsafe (it stores Python objects that ``weights_only``
refuses), and how to make a good one. The fault is found by the exception and by the file's first bytes:
``PK\\x03\\x04`` is the zip archive of ``torch.save``, ``\\x80`` a pickle (its legacy format), an 8-byte
little-endian length then ``{`` a safetensors file.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import fsspec
import torch
from torch import Tensor

__all__ = ["CheckpointFileError", "MissingCheckpointError", "is_local_path", "read_checkpoint", "read_tensors"]
Reason = Literal["missing", "not a file", "unreadable", "empty", "truncated", "corrupt", "not a checkpoint", "unsafe"]
TEACHER_COMMAND = "kd-lightning fit --config configs/digits/teacher.yaml"
TEACHER_EXPORT = "runs/digits/teacher/digits_teacher.safetensors"
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
ZIP_MAGIC, ZIP_END, PICKLE_MAGIC = b"PK\x03\x04", b"PK\x05\x06", b"\x80"
SNIFF_BYTES = 512
ZIP_TAIL_BYTES = 65_557  # the end-of-archive record (22 bytes) plus the longest archive comment
MAX_HEADER_BYTES = 100_000_000  # the largest header safetensors accepts

REMEDY_TEACHER = (
    f"To make one, train a teacher: `{TEACHER_COMMAND}` writes {TEACHER_EXPORT} (`cp` it to checkpoints/ to install "
    "it), or save a trained network with `torch.save(model.state_dict(), path)`; or point `teacher_weights` to an "
    "existing .ckpt/.pt/.safetensors file."
)
REMEDY_CHECKPOINT = (
    "Use another checkpoint of the run (its checkpoints/ folder, e.g. "
    "runs/<name>/lightning_logs/version_<n>/checkpoints/, holds last.ckpt and the best epoch=...ckpt), "
    "or re-run the fit that wrote it."
)
REMEDY_WEIGHTS = (
    "To make one, save the network's weights with `torch.save(model.state_dict(), path)` or "
    "`safetensors.torch.save_file(model.state_dict(), path)`, or point to an existing good file."
)
UNSAFE_HPARAMS = (
    "A LightningModule whose `save_hyperparameters()` receives an nn.Module pickles that network into every "
    "checkpoint: pass `ignore=[...]` with those arguments and save again."
)


class CheckpointFileError(ValueError):
    """A file the library reads is missing or bad; the message names the file, the fault and the fix.

    Attributes:
        path: the path as given.
        reason: which fault: ``missing``, ``not a file``, ``unreadable``, ``empty``, ``truncated``, ``corrupt``,
            ``not a checkpoint`` or ``unsafe``.
    """

    def __init__(self, message: str, path: str | Path, reason: Reason) -> None:
        super().__init__(message)
        self.path = Path(path)
        self.reason = reason


class MissingCheckpointError(CheckpointFileError, FileNotFoundError):
    """The file does not exist (also a ``FileNotFoundError``)."""


# ----------------------------------------------------------------- messages
def describe_path(path: Path) -> str:
    """``'/work/ckpt/a.pt'`` or, for a relative path, ``'ckpt/a.pt' (relative to the working directory '/work')``."""
    if path.is_absolute():
        return repr(str(path))
    return f"{str(path)!r} (relative to the working directory {os.getcwd()!r})"


def remedy_for(what: str, path: Path | None = None) -> str:
    """How to make a good file of this kind (teacher weights, a checkpoint, any other weights).

    For teacher weights, a config under ``./configs`` whose ``ExportWeights`` writes a file of the same name is named
    with its command (``checkpoints/cifar100/resnet32x4.safetensors`` -> ``configs/cifar100/teacher_resnet32x4.yaml``).
    """
    if "teacher" in what:
        maker = _exporting_config(path) if path is not None else None
        if maker is None:
            return REMEDY_TEACHER
        config, export = maker
        return (
            f"To make it, train the teacher: `kd-lightning fit --config {config}` writes {export}; then "
            f"`cp {export} {path}`. Or point `teacher_weights` to an existing .ckpt/.pt/.safetensors file."
        )
    if "checkpoint" in what:
        return REMEDY_CHECKPOINT
    return REMEDY_WEIGHTS


def _exporting_config(path: Path) -> tuple[str, str] | None:
    """``(config, export path)`` of the first config under ``./configs`` that exports a file named ``path.name``."""
    folder = Path("configs")
    if not folder.is_dir():
        return None
    for config in sorted(folder.rglob("*.yaml")):
        text = config.read_text(errors="replace")
        if "ExportWeights" not in text:
            continue
        for line in text.splitlines():
            found = re.search(r"path:\s*([^\s,}]+)", line)
            if found and not line.lstrip().startswith("#") and Path(found.group(1)).name == path.name:
                return str(config), found.group(1)
    return None


def _expected(path: Path) -> str:
    if path.suffix == ".safetensors":
        return "a safetensors file of tensors"
    if path.suffix == ".ckpt":
        return "a Lightning checkpoint (a torch.save zip archive)"
    return "a torch.save file or a safetensors file of tensors"


def _size(count: int) -> str:
    return f"{count:,} byte{'s' if count != 1 else ''}"


def _fail(path: Path, what: str, reason: Reason, problem: str, remedy: str | None = None) -> CheckpointFileError:
    """The error to raise: ``<what> <path> <problem>. <remedy>``."""
    message = f"{what} {describe_path(path)} {problem} {remedy or remedy_for(what, path)}"
    cls = MissingCheckpointError if reason == "missing" else CheckpointFileError
    return cls(message, path, reason)


def _candidates(folder: Path, limit: int = 6) -> list[str]:
    """Names of the weight-like files in ``folder`` (at most ``limit``), newest first."""
    try:
        files = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    except OSError:
        return []
    return [p.name for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]]


def _missing(path: Path, what: str, remedy: str | None) -> CheckpointFileError:
    folder = path.parent
    if path.is_symlink():
        where = f"it is a symbolic link to {os.readlink(path)!r}, which does not exist"
    elif not folder.is_dir():
        where = f"the folder {str(folder)!r} does not exist either"
    elif names := _candidates(folder):
        where = f"{str(folder)!r} holds {', '.join(names)}"
    else:
        where = f"{str(folder)!r} holds no {'/'.join(WEIGHT_SUFFIXES)} file"
    problem = f"not found: expected a file there but got nothing ({where})."
    return _fail(path, what, "missing", problem, remedy)


def _not_a_file(path: Path, what: str, remedy: str | None) -> CheckpointFileError:
    if not path.is_dir():
        problem = "is not a regular file: expected a file but got a device, pipe or socket."
        return _fail(path, what, "not a file", problem, remedy)
    if (path / ".metadata").is_file():
        problem = (
            "is a directory: expected one file but got a sharded (distributed) checkpoint folder; consolidate it into "
            f"one file first: `python -m lightning.pytorch.utilities.consolidate_checkpoint {path}`."
        )
        return _fail(path, what, "not a file", problem, remedy)
    names = _candidates(path)
    holds = f"holding {', '.join(names)}: pass one of them" if names else f"holding no {'/'.join(WEIGHT_SUFFIXES)} file"
    return _fail(path, what, "not a file", f"is a directory: expected a file but got a folder {holds}.", remedy)


def _unreadable(path: Path, what: str, error: OSError, remedy: str | None) -> CheckpointFileError:
    if isinstance(error, PermissionError):
        try:
            info = path.stat()
            owner = f"mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid}, you are uid {os.geteuid()}"
            fix = f"make it readable (`chmod a+r {path}`) or run as its owner"
        except OSError:
            owner = "a folder on the way to it is not searchable"
            fix = f"make the folders on its path searchable (`chmod a+x`) for uid {os.geteuid()}"
        problem = f"cannot be read: expected a readable file but got permission denied ({owner}); {fix}."
        return _fail(path, what, "unreadable", problem, remedy)
    problem = f"cannot be read: expected a readable file but got {type(error).__name__}: {error}."
    return _fail(path, what, "unreadable", problem, remedy)


# ----------------------------------------------------------------- recognising the format
def _sniff(head: bytes) -> str:
    """``zip``, ``pickle``, ``safetensors``, ``html``, ``lfs``, ``text`` or ``unknown``, from the first bytes."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(PICKLE_MAGIC):
        return "pickle"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= MAX_HEADER_BYTES:
        return "safetensors"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n").lower()
    if text.startswith(("<!doctype html", "<html")) or (text.startswith("<") and "<html" in text):
        return "html"
    if text.startswith("version https://git-lfs.github.com/spec/"):
        return "lfs"
    if head and sum(32 <= b < 127 or b in b"\t\r\n" for b in head) / len(head) > 0.95:
        return "text"
    return "unknown"


def _first_line(head: bytes, limit: int = 60) -> str:
    line = head.decode("utf-8", errors="replace").strip().splitlines()[0] if head.strip() else ""
    return line[:limit] + ("..." if len(line) > limit else "")


def _text_instead(path: Path, what: str, kind: str, head: bytes, remedy: str | None) -> CheckpointFileError:
    start = _first_line(head)
    if kind == "html":
        problem = (
            f"is an HTML page, not {_expected(path)}: it starts with {start!r}. A download link saved the web page "
            "(a login, error or GitHub 'blob' page) instead of the file: download the raw file (GitHub: the 'Raw' "
            "link; Hugging Face: '/resolve/' instead of '/blob/' in the address)."
        )
    elif kind == "lfs":
        problem = (
            f"is a Git LFS pointer, not {_expected(path)}: the repository was cloned without its large files; "
            f"run `git lfs pull --include={path}` to fetch it."
        )
    else:
        problem = f"is a text file, not {_expected(path)}: it starts with {start!r}."
    return _fail(path, what, "corrupt", problem, remedy)


def _check_safetensors(path: Path, what: str, head: bytes, size: int, remedy: str | None) -> None:
    """Truncation and header checks from the header alone (safetensors' own errors do not name the file)."""
    header_length = int.from_bytes(head[:8], "little")
    if 8 + header_length > size:
        problem = (
            f"is truncated: expected a safetensors header of {_size(header_length)} but the file ends after "
            f"{_size(size - 8)} of it; the save, copy or download was cut short."
        )
        raise _fail(path, what, "truncated", problem, remedy)
    with open(path, "rb") as file:
        file.seek(8)
        raw = file.read(header_length)
    try:
        header = json.loads(raw)
        end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        problem = (
            f"is corrupt: expected a safetensors JSON header of {_size(header_length)} but it does not parse "
            f"({type(error).__name__}: {error})."
        )
        raise _fail(path, what, "corrupt", problem, remedy) from None
    expected = 8 + header_length + end
    if size < expected:
        problem = (
            f"is truncated: expected {_size(expected)} (its header lists {len(header) - ('__metadata__' in header)} "
            f"tensors) but got {_size(size)}; the save, copy or download was cut short."
        )
        raise _fail(path, what, "truncated", problem, remedy)


def _zip_is_complete(path: Path, size: int) -> bool:
    with open(path, "rb") as file:
        file.seek(max(0, size - ZIP_TAIL_BYTES))
        return ZIP_END in file.read()


def _unsafe_global(message: str) -> str | None:
    """The global that ``weights_only`` refused, from torch's message (``None``: the file is not a valid pickle)."""
    if "Weights only load failed" not in message:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"Unsupported class ([\w.]+)", message)
    if found:
        return found.group(1)
    return None if "Unsupported operand" in message else "an object of a class outside the allowed ones"


def _torch_load(path: Path, what: str, kind: str, size: int, map_location: Any, remedy: str | None) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as error:
        raise _unreadable(path, what, error, remedy) from None
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, OSError ... for bad bytes
        message = str(error)
        refused = _unsafe_global(message)
        if refused is not None:
            problem = (
                f"was refused as unsafe: expected only tensors and plain Python values (it is loaded with "
                f"weights_only=True) but it stores the Python object `{refused}` (e.g. a whole pickled model instead "
                "of its state dict), which loading would have to import and run. Make a tensors-only file: "
                "`torch.save(model.state_dict(), path)` or `safetensors.torch.save_file(model.state_dict(), path)`."
            )
            if "checkpoint" in what:
                problem += f" {UNSAFE_HPARAMS}"
            raise _fail(path, what, "unsafe", problem, remedy) from None
        if kind == "zip" and not _zip_is_complete(path, size):
            problem = (
                f"is truncated: expected a complete torch.save zip archive but got {_size(size)} without the "
                "end-of-archive record; the save, copy or download was cut short."
            )
            raise _fail(path, what, "truncated", problem, remedy) from None
        if kind == "pickle" and isinstance(error, EOFError):
            problem = (
                f"is truncated: expected a complete pickle (legacy torch.save format) but it ends at {_size(size)}."
            )
            raise _fail(path, what, "truncated", problem, remedy) from None
        detail = message.strip().splitlines()[0].split(". ")[0].rstrip(".")[:200] if message.strip() else "no message"
        if "weights_only" in detail or "Weights only" in detail:
            detail = "it is not a valid pickle"
        problem = f"is corrupt: expected {_expected(path)} but it does not load ({type(error).__name__}: {detail})."
        raise _fail(path, what, "corrupt", problem, remedy) from None


def _stat_and_head(path: Path, what: str, remedy: str | None) -> tuple[int, bytes]:
    """Size and first bytes of ``path``; a missing, non-file or unreadable path is an error."""
    try:
        if not path.exists():
            raise _missing(path, what, remedy)
        if path.is_file():
            with open(path, "rb") as file:
                return os.fstat(file.fileno()).st_size, file.read(SNIFF_BYTES)
    except CheckpointFileError:
        raise
    except OSError as error:
        if not isinstance(error, IsADirectoryError):
            raise _unreadable(path, what, error, remedy) from None
    raise _not_a_file(path, what, remedy)


def _load(path: str | Path, what: str, map_location: Any, remedy: str | None) -> tuple[Any, str]:
    """Check the file, recognise its format and load it: ``(object, format)``, format ``safetensors`` or ``torch``.

    A remote URL (``s3://``, ``https://``, ...) is read by Lightning's loader, still with ``weights_only=True``.
    """
    if not is_local_path(path):
        with fsspec.open(str(path), "rb") as file:
            return torch.load(file, map_location=map_location, weights_only=True), "torch"
    path = Path(path)
    size, head = _stat_and_head(path, what, remedy)
    if size == 0:
        problem = (
            f"is empty: expected {_expected(path)} but got 0 bytes (an interrupted or failed save, copy or download "
            "leaves an empty file)."
        )
        raise _fail(path, what, "empty", problem, remedy)
    kind = _sniff(head)
    if kind in ("html", "lfs", "text"):
        raise _text_instead(path, what, kind, head, remedy)
    if kind == "safetensors":
        _check_safetensors(path, what, head, size, remedy)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except (SafetensorError, RuntimeError, ValueError) as error:
            problem = f"is corrupt: expected a safetensors file of tensors but it does not load ({error})."
            raise _fail(path, what, "corrupt", problem, remedy) from None
    if kind == "unknown" and (path.suffix == ".safetensors" or len(head) < 8):
        problem = (
            "is corrupt: expected a safetensors file (an 8-byte little-endian header length, then a JSON header "
            f"starting with '{{') or a torch.save file but it starts with bytes {head[:12].hex(' ')}."
        )
        raise _fail(path, what, "corrupt", problem, remedy)
    try:
        return _torch_load(path, what, kind, size, map_location, remedy), "torch"
    except CheckpointFileError as error:
        if kind != "unknown" or error.reason != "corrupt":
            raise
        problem = (
            f"is corrupt or not a weights file: expected a torch.save zip archive (starting with 'PK\\x03\\x04'), a "
            "pickle (starting with '\\x80') or a safetensors file (an 8-byte header length, then '{') but it starts "
            f"with bytes {head[:12].hex(' ')}."
        )
        raise _fail(path, what, "corrupt", problem, remedy) from None


# ----------------------------------------------------------------- reading
def read_checkpoint(
    path: str | Path,
    what: str = "checkpoint",
    required: tuple[str, ...] = ("state_dict",),
    map_location: Any = "cpu",
    remedy: str | None = None,
) -> dict[str, Any]:
    """Read a Lightning checkpoint or any ``torch.save`` dict with ``weights_only=True``.

    Args:
        path: the file.
        what: what the file is, for the message (``"checkpoint"``, ``"teacher weights"``, ``"resume checkpoint"``).
        required: keys the dict must have (a Lightning checkpoint has ``state_dict``; ``()`` accepts any dict).
        map_location: where tensors go (``torch.load``'s argument).
        remedy: how to make a good file, when the default for ``what`` does not fit.

    Raises:
        CheckpointFileError: naming the file, the fault (its ``reason``) and the fix; ``MissingCheckpointError`` (also a
            ``FileNotFoundError``) when it does not exist.
    """
    loaded, kind = _load(path, what, map_location, remedy)
    path = Path(path)
    if kind == "safetensors":
        problem = (
            "is not a checkpoint: expected a Lightning checkpoint (torch.save of a dict with "
            f"{', '.join(map(repr, required)) or 'training state'}) but got a safetensors file of weights only; load "
            "it as weights (e.g. `teacher_weights`) instead."
        )
        raise _fail(path, what, "not a checkpoint", problem, remedy)
    if not isinstance(loaded, Mapping):
        problem = f"is not a checkpoint: expected a dict (torch.save of a checkpoint) but got {type(loaded).__name__}."
        raise _fail(path, what, "not a checkpoint", problem, remedy)
    missing = [key for key in required if key not in loaded]
    if missing:
        bare = bool(loaded) and all(isinstance(value, Tensor) for value in loaded.values())
        tensors = "" if _holds_tensors(loaded) else " and no tensors at all"
        got = "a bare state dict of weights" if bare else f"a dict with keys {_keys(loaded)}{tensors}"
        hint = "; load it as weights (e.g. `teacher_weights`) instead." if bare else "."
        problem = f"is not a checkpoint: expected the key(s) {', '.join(map(repr, missing))} but got {got}{hint}"
        raise _fail(path, what, "not a checkpoint", problem, remedy)
    if not required and not _holds_tensors(loaded):
        problem = f"is not a checkpoint: expected tensors in it but got none (keys {_keys(loaded)})."
        raise _fail(path, what, "not a checkpoint", problem, remedy)
    return dict(loaded)


def read_tensors(path: str | Path, what: str = "weights", remedy: str | None = None) -> dict[str, Tensor]:
    """Read a state dict (name -> tensor) from a ``.safetensors``, ``torch.save`` or Lightning checkpoint file.

    A dict under ``state_dict``, ``model`` or ``model_state_dict`` (a Lightning checkpoint, a training script's
    checkpoint) is unwrapped. Loaded on the CPU with ``weights_only=True``.

    Args:
        path: the file.
        what: what the file is, for the message (``"teacher weights"``, ``"weights"``).
        remedy: how to make a good file, when the default for ``what`` does not fit.

    Raises:
        CheckpointFileError: naming the file, the fault and the fix (see :func:`read_checkpoint`).
    """
    loaded, _ = _load(path, what, "cpu", remedy)
    path = Path(path)
    for key in WRAPPER_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping):
        problem = (
            f"holds no weights: expected a state dict of tensors (name -> Tensor) but got a {type(loaded).__name__}."
        )
        raise _fail(path, what, "not a checkpoint", problem, remedy)
    if not loaded:
        problem = "holds no weights: expected a state dict of tensors (name -> Tensor) but got an empty dict."
        raise _fail(path, what, "not a checkpoint", problem, remedy)
    bad = next(((key, value) for key, value in loaded.items() if not isinstance(value, Tensor)), None)
    if bad is not None:
        key, value = bad
        tensors = sum(isinstance(v, Tensor) for v in loaded.values())
        problem = (
            f"holds no state dict: expected a dict of tensors (name -> Tensor) but {key!r} is {type(value).__name__} "
            f"({tensors} of its {len(loaded)} values are tensors; keys {_keys(loaded)}; a dict under "
            f"{', '.join(map(repr, WRAPPER_KEYS))} is unwrapped)."
        )
        raise _fail(path, what, "not a checkpoint", problem, remedy)
    return dict(loaded)


def _keys(mapping: Mapping[Any, Any], limit: int = 6) -> str:
    keys = [repr(key) for key in list(mapping)[:limit]]
    return ", ".join(keys) + (f" ... ({len(mapping)} in all)" if len(mapping) > limit else "") if keys else "(none)"


def _holds_tensors(value: Any, depth: int = 4) -> bool:
    if isinstance(value, Tensor):
        return True
    if depth == 0:
        return False
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    return any(_holds_tensors(item, depth - 1) for item in items)


def is_local_path(path: str | Path) -> bool:
    """Whether ``path`` is a file on this machine (no ``s3://``-style protocol, or ``file://``)."""
    return fsspec.utils.get_protocol(str(path)) in ("file", "local")
