"""The run's outputs checked together, before the first optimizer step (:mod:`kd_lightning.files.outputs`).

Every writer callback (``ExportWeights``, ``ExportStudent``, ``ConvertQuantized``, ``DistillationReport``) says what
it will write (``planned_outputs``); the first of them to be set up checks all of them against every file the run
reads (the module's :meth:`~kd_lightning.modules.DistillationModule.files_read`, the checkpoint being resumed, the
files the callbacks themselves read) and against each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from kd_lightning.files.outputs import KindCheck, check_output, reads_of

PlannedOutput = tuple[str | Path, str, str, KindCheck | None]
"""``(target, what is written, the setting that names it, the kind check of an existing file)``."""


def run_reads(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[Path, str]:
    """Every file the run reads: the module's (teacher weights, builders' weights), the resumed checkpoint, and the
    callbacks' own inputs (a report's ``student_alone``)."""
    entries: list[tuple[Any, str]] = []
    files_read = getattr(pl_module, "files_read", None)
    if callable(files_read):
        entries += list(files_read().items())
    entries.append((trainer.ckpt_path, "the checkpoint this run resumes"))
    for callback in trainer.callbacks:
        reads = getattr(callback, "files_read", None)
        if callable(reads):
            entries += list(reads().items())
    return reads_of(entries)


def check_run_outputs(callback: L.Callback, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Check every planned output of the run (only the first writer callback does it, once per stage)."""
    writers = [cb for cb in trainer.callbacks if callable(getattr(cb, "planned_outputs", None))]
    if not writers or writers[0] is not callback:
        return
    reads, written = run_reads(trainer, pl_module), {}
    for writer in writers:
        for target, what, where, kind in writer.planned_outputs(trainer, pl_module):
            check_output(target, what, where, reads, kind, written)
