"""Loggers that continue a resumed run instead of erasing it.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it opens a version folder that is not empty, so a
run resumed into its own folder would lose every metric logged before the interruption. :class:`CSVLogger` here is
the same logger with ``append=True`` keeping the file: new rows are appended under its header (the header grows when
new metrics appear, as Lightning's does). The ``kd-lightning`` command switches it on when ``--ckpt_path`` resumes
a run (see :mod:`kd_lightning.cli.resume`).
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from kd_lightning.modules._lightning import AppendingCSVWriter


class CSVLogger(LightningCSVLogger):
    """Lightning's ``CSVLogger``; with ``append=True`` an existing ``metrics.csv`` of the version is continued.

    Args:
        append: keep and extend the version folder's ``metrics.csv`` (a resumed run) instead of deleting it.
        **kwargs: Lightning's ``CSVLogger`` arguments (``save_dir``, ``name``, ``version``, ...).
    """

    def __init__(self, *args: Any, append: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.append = append

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (rank 0 only); an appending one when ``append``."""
        if self._experiment is None and self.append:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingCSVWriter(log_dir=self.log_dir)
        return super().experiment
