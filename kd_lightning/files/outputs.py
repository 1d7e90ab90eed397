"""One policy for every file a run writes: nothing good is overwritten.

Every writer of the library (the weight and student exports, the int8 conversion, the distillation report, the
``kd-lightning-export`` command) asks :func:`check_output` before the first optimizer step, and a run is refused when
one of its outputs would

* replace a file the same run reads (the teacher's weights, a builder's weights, the checkpoint being resumed or
  exported, the ``student_alone`` report it compares with) — never allowed; or
* replace a file of another kind or of another architecture than the one it would write: a weights file whose tensor
  names or shapes differ from the network to be saved (a shallow student written over the shipped teacher), a file
  that is not a TorchScript archive where one would be written, a JSON file that is not a distillation report. The
  message names both, and the fix is another path (or removing the old file on purpose); or
* be a folder, or be written twice by the same run.

A file of the same kind and architecture (the previous run of the same config) is replaced, atomically, as before.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from torch import Tensor

from kd_lightning.files.read import CheckpointFileError, read_tensors
from kd_lightning.files.weights import describe_keys

KindCheck = Callable[[Path], str | None]
"""``existing file -> why it is not what the writer would write`` (``None``: same kind and architecture)."""


class OutputRefusedError(ValueError):
    """A run would write an output over a file it must not replace (the message says which, why, and the fix)."""


def resolved(path: str | Path) -> Path:
    """``path`` made absolute, symlinks resolved (so two spellings of one file compare equal)."""
    return Path(path).expanduser().resolve()


def check_output(
    target: str | Path,
    what: str,
    where: str,
    reads: Mapping[Path, str],
    kind: KindCheck | None = None,
    written: dict[Path, str] | None = None,
    setting: str = "file",
) -> Path:
    """Refuse ``target`` if writing ``what`` there would replace something good (see the module docstring).

    Args:
        target: the file the writer would write.
        what: what it writes (``"the trained student's weights"``), for the message.
        where: the setting that names the target (``"ExportWeights.copy_to"``), for the message.
        reads: every file the run reads, resolved, with what it is to the run (``"teacher_weights"``).
        kind: checks an existing file is of the kind and architecture the writer writes.
        written: the targets of the run's writers checked so far (updated), so two writers never share one file.
        setting: what ``where`` names, for the fix (``"file"``; ``"folder"`` for a command's output folder).

    Returns:
        The resolved target.
    """
    path = resolved(target)
    folders = [folder for folder in reads if folder != path and folder.is_dir()]
    inside = next((folder for folder in folders if path.is_relative_to(folder)), None)
    if path in reads or inside is not None:
        read = reads[path] if inside is None else f"inside {inside}, {reads[inside]}"
        raise OutputRefusedError(
            f"{where} ({target}) is {read}, which this run reads: writing {what} there would replace it (and every "
            f"later run that reads it would get the new network); set {where} to another {setting}."
        )
    if written is not None:
        if path in written:
            raise OutputRefusedError(
                f"{where} ({target}) is also written by {written[path]} in this run: one would replace the other; "
                f"give each output its own file."
            )
        written[path] = where
    if path.is_dir():
        raise OutputRefusedError(f"{where} ({target}) is a folder; give the path of a file to write {what} to.")
    if path.is_file() and kind is not None:
        reason = kind(path)
        if reason is not None:
            raise OutputRefusedError(
                f"{where} ({target}) already exists and {reason}: writing {what} there would replace it; set {where} "
                f"to another {setting} (or remove the old file if it is no longer needed)."
            )
    return path


def same_weights(state_dict: Mapping[str, Tensor]) -> KindCheck:
    """A kind check: the existing file holds a state dict with the same tensor names and shapes as ``state_dict``."""

    def check(path: Path) -> str | None:
        if path.suffix == ".ckpt":
            return (
                "is a Lightning checkpoint (a run's saved state, perhaps the one this run resumes), not a weights file"
            )
        try:
            existing = read_tensors(path, what="existing output")
        except CheckpointFileError:
            return "is not a weights file"
        missing = sorted(state_dict.keys() - existing.keys())
        extra = sorted(existing.keys() - state_dict.keys())
        shapes = [
            f"{key}: {tuple(existing[key].shape)} there vs {tuple(value.shape)} now"
            for key, value in state_dict.items()
            if key in existing and tuple(existing[key].shape) != tuple(value.shape)
        ]
        if not (missing or extra or shapes):
            return None
        parts = [
            f"{len(existing)} tensors there vs {len(state_dict)} now",
            f"missing there: {describe_keys(missing, 3)}" if missing else "",
            f"not in the network: {describe_keys(extra, 3)}" if extra else "",
            f"other shapes: {describe_keys(shapes, 2)}" if shapes else "",
        ]
        return "holds the weights of another architecture (" + "; ".join(p for p in parts if p) + ")"

    return check


def is_torchscript(path: Path) -> str | None:
    """A kind check: the existing file is a TorchScript archive (``torch.jit.save``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return "is not a TorchScript file"
    return (
        None
        if any(name.endswith("constants.pkl") or "/code/" in name for name in names)
        else ("is not a TorchScript file (a zip archive without TorchScript code)")
    )


def is_report(path: Path) -> str | None:
    """A kind check: the existing file is a distillation report (``report.json``: networks and measurement)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return "is not a JSON distillation report"
    if not isinstance(data, dict) or "networks" not in data or "measurement" not in data:
        return "is a JSON file but not a distillation report (no networks and measurement)"
    return None


def reads_of(entries: Iterable[tuple[str | Path | None, str]]) -> dict[Path, str]:
    """``{resolved path: what it is}`` of the files a run reads (``None`` paths and remote URLs are skipped)."""
    reads: dict[Path, str] = {}
    for path, what in entries:
        if path is None or "://" in str(path):
            continue
        reads.setdefault(resolved(path), what)
    return reads
