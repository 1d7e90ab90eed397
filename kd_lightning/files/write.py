"""Atomic writes: a crash or an exception never leaves half a file in place of a good one.

:func:`atomic_write` writes a temporary file next to the target, flushes it to disk and renames it over the target.
:class:`AtomicCheckpointIO` is Lightning's ``TorchCheckpointIO`` with atomic saves and defensive loads
(:func:`~kd_lightning.files.read.read_checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from kd_lightning.files.read import is_local_path, read_checkpoint

__all__ = ["AtomicCheckpointIO", "atomic_write"]


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write_fn: Callable[[Path], object]) -> Path:
    """Write ``path`` atomically: ``write_fn(temporary_path)`` writes a temporary file next to it, then rename.

    The temporary file is in the same directory (so the rename never crosses filesystems), flushed to disk with
    ``fsync`` before ``os.replace`` puts it in place, and removed if ``write_fn`` or anything after it fails: the old
    file, if any, is then untouched. A replaced file keeps its permissions; a new one gets the usual ``0o666 & ~umask``.

    Args:
        path: the file to write (its folder is created).
        write_fn: writes the whole content to the path it is given, e.g. ``lambda tmp: torch.save(obj, tmp)``.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        write_fn(temporary)
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else _new_file_mode()
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # persist the rename itself; not every platform can open a folder
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic saves and defensive loads of local files.

    ``save_checkpoint`` writes through :func:`atomic_write` (Lightning's own save renames a temporary file from the
    system temp folder, which is a copy in place, not a rename, when that folder is on another filesystem, and does not
    ``fsync``). ``load_checkpoint`` reads through :func:`read_checkpoint`, so a bad resume or test checkpoint names
    its file and fault. Remote paths (``s3://``, ...) and an explicit ``weights_only=False`` use Lightning's code.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()], logger=False)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not is_local_path(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False or not is_local_path(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return read_checkpoint(path, what="checkpoint", map_location=map_location)
