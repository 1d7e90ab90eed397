"""Every use of Lightning's private API, in one place, each behind a named function.

Lightning is pinned only below 3, so a minor release may rename any of these; a test
(``tests/modules/test_lightning_private.py``) checks every one exists and fails loudly, naming the symbol, when an
upgrade removes it.

* :func:`given_hyperparameters` — whether ``LightningCLI`` is instantiating the module with the whole config as its
  hyperparameters (``lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters``).
* :func:`load_checkpoint_into` — Lightning's ``load_from_checkpoint`` body
  (``lightning.pytorch.core.saving._load_from_checkpoint``), called after the library's own file and class checks.
* :func:`loggers_write_this_step` — whether the loggers write this step's values
  (``trainer._logger_connector.should_update_logs``).
* :func:`training_dataloader` — the fit's training loader when there is no datamodule
  (``trainer.fit_loop._data_source``).
* :class:`AppendingCSVWriter` — Lightning's CSV experiment writer continuing an existing ``metrics.csv``
  (overrides ``ExperimentWriter._check_log_dir_exists``, reads ``_fs``).
* :func:`summary_settings` — a ``ModelSummary`` callback's ``max_depth`` and options (``_max_depth``,
  ``_summarize_kwargs``).
* :class:`CheckpointPathCLI` — ``LightningCLI`` whose ``--ckpt_path`` handling (``LightningCLI._parse_ckpt_path``) is
  the public method :meth:`CheckpointPathCLI.resolve_ckpt_path`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.core import saving
from lightning.pytorch.core.mixins import hparams_mixin
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

PRIVATE_SYMBOLS: dict[str, tuple[Any, str]] = {
    "hparams_mixin._given_hyperparameters": (hparams_mixin, "_given_hyperparameters"),
    "saving._load_from_checkpoint": (saving, "_load_from_checkpoint"),
    "LightningCLI._parse_ckpt_path": (LightningCLI, "_parse_ckpt_path"),
    "ExperimentWriter._check_log_dir_exists": (ExperimentWriter, "_check_log_dir_exists"),
}
"""``name -> (owner, attribute)`` of every private class-level symbol used here (instance attributes of a running
Trainer are checked by the test on a real fit)."""


def given_hyperparameters() -> bool:
    """Whether the module is being built by ``LightningCLI``'s instantiator, which saves the whole config."""
    return hparams_mixin._given_hyperparameters.get() is not None


def load_checkpoint_into(cls: type, path: str | Path, *args: Any, **kwargs: Any) -> Any:
    """Lightning's ``load_from_checkpoint`` for ``cls`` (``args``: ``map_location, hparams_file, strict,
    weights_only``; ``kwargs``: overrides of the saved hyperparameters)."""
    return saving._load_from_checkpoint(cls, path, *args, **kwargs)


def loggers_write_this_step(trainer: Any) -> bool:
    """Whether Lightning hands this training step's logged values to the loggers (every ``log_every_n_steps``)."""
    return bool(trainer._logger_connector.should_update_logs)


def summary_settings(callback: Any) -> tuple[int, dict[str, Any]]:
    """``(max_depth, summarize_kwargs)`` of Lightning's ``ModelSummary`` (or ``RichModelSummary``) callback."""
    return callback._max_depth, dict(callback._summarize_kwargs)


def training_dataloader(trainer: Any) -> Any:
    """The training loader of the fit: the datamodule's, or the one passed to ``Trainer.fit``."""
    if trainer.datamodule is not None:
        return trainer.datamodule.train_dataloader()
    return trainer.fit_loop._data_source.dataloader()


class AppendingCSVWriter(ExperimentWriter):
    """Lightning's CSV experiment writer that keeps an existing ``metrics.csv`` and continues it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class CheckpointPathCLI(LightningCLI):
    """``LightningCLI`` whose handling of ``--ckpt_path`` is :meth:`resolve_ckpt_path` (Lightning's re-parses the
    model from the checkpoint's hyperparameters, which this library replaces with its resume policy)."""

    def _parse_ckpt_path(self) -> None:
        self.resolve_ckpt_path()

    def resolve_ckpt_path(self) -> None:
        """Check and resolve ``--ckpt_path`` of the parsed config (Lightning's default: none)."""
