"""Shared test helpers: the repository's paths and a fast CPU Trainer (importable: ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TEACHER_WEIGHTS = ROOT / "checkpoints" / "digits_teacher.safetensors"
TINY_TRAINER = {
    "max_epochs": 1,
    "limit_train_batches": 2,
    "limit_val_batches": 1,
    "limit_test_batches": 2,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
"""The one tiny budget of a ``kd-lightning fit`` in the tests: one epoch of two batches, one validation batch."""


def tiny_fit(test_after_fit: bool = False, **trainer: object) -> list[str]:
    """Command-line options of the tiny budget (:data:`TINY_TRAINER`), with a test's own ``trainer`` settings
    (``max_steps=3``, ``logger=False``, ...) and whether to test after fitting."""
    settings = {**TINY_TRAINER, **trainer}
    options = [
        f"--trainer.{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items()
    ]
    return [*options, f"--test_after_fit={str(test_after_fit).lower()}"]


TINY_FIT = tiny_fit()
"""The tiny budget's options as they are (most tests)."""


def fast_trainer_kwargs(tmp_path: Path, **overrides) -> dict:
    """The arguments of :func:`fast_trainer`: CPU, tiny budgets, no logger, progress bar or checkpoints."""
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=2,
        limit_test_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    kwargs.update(overrides)
    return kwargs


def fast_trainer(tmp_path: Path, **overrides) -> L.Trainer:
    """A CPU Trainer with tiny budgets, no logger and no progress bar."""
    return L.Trainer(**fast_trainer_kwargs(tmp_path, **overrides))


class LossRecorder(L.Callback):
    """Records the loss of every training step (``losses``), as a float."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))
