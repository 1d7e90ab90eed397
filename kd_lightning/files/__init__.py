"""Disk, checked and recipe-agnostic: the defensive loader, atomic writes, state-dict loading and local folders.

May import: ``kd_lightning.losses``, ``kd_lightning.core``.
"""

from kd_lightning.files.read import (
    TEACHER_COMMAND,
    CheckpointFileError,
    MissingCheckpointError,
    is_local_path,
    read_checkpoint,
    read_tensors,
)
from kd_lightning.files.write import AtomicCheckpointIO, atomic_write

__all__ = [
    "TEACHER_COMMAND",
    "AtomicCheckpointIO",
    "CheckpointFileError",
    "MissingCheckpointError",
    "atomic_write",
    "is_local_path",
    "read_checkpoint",
    "read_tensors",
]
