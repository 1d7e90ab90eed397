"""Shared test helpers: the repository's paths and a fast CPU Trainer (importable: ``from helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TEACHER_WEIGHTS = ROOT / "checkpoints" / "digits_teacher.safetensors"


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
