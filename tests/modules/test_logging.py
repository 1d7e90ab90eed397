"""Loss logging on the steps where it can be read: the loggers' files are the same as when every step is logged."""

from __future__ import annotations

import functools

import lightning as L
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from kd_lightning import DigitsDataModule, OfflineDistillation
from kd_lightning.models import DigitsCNN, DigitsMLP


def make_module() -> OfflineDistillation:
    torch.manual_seed(0)
    return OfflineDistillation(
        student=DigitsMLP(hidden=(16,)),
        teacher=DigitsCNN(width=32),
        teacher_weights=TEACHER_WEIGHTS,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )


class EveryStep(L.Callback):
    """Records the ``train/`` values of ``callback_metrics`` after every training step."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


def csv_rows(tmp_path, progress_bar: bool, callbacks=()) -> tuple[str, L.Trainer]:
    logger = CSVLogger(tmp_path, name=f"bar_{progress_bar}")
    trainer = fast_trainer(
        tmp_path,
        max_epochs=2,
        limit_train_batches=7,
        limit_val_batches=1,
        logger=logger,
        log_every_n_steps=3,
        enable_progress_bar=progress_bar,
        callbacks=list(callbacks),
    )
    trainer.fit(make_module(), datamodule=DigitsDataModule(batch_size=32, shuffle_seed=0))
    return (logger.log_dir + "/metrics.csv", trainer)


def test_the_loggers_write_the_same_rows_whether_or_not_every_step_is_logged(tmp_path, one_torch_thread):
    every_step, _ = csv_rows(tmp_path, progress_bar=True)  # train/loss is logged every step for the bar
    fewer, trainer = csv_rows(tmp_path, progress_bar=False)
    with open(every_step) as left, open(fewer) as right:
        expected, got = left.read(), right.read()
    assert got == expected
    assert "train/ce" in got.splitlines()[0] and "train/kd" in got.splitlines()[0]
    assert len(got.splitlines()) > 5  # steps 3 and 6 of each epoch, the epoch ends, validation
    assert {"train/loss", "train/ce", "train/kd"} <= set(trainer.callback_metrics)


def test_a_monitored_component_is_logged_every_step(tmp_path, one_torch_thread):
    recorder = EveryStep()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train/kd", every_n_train_steps=1)
    trainer = fast_trainer(
        tmp_path,
        max_steps=5,
        limit_train_batches=8,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[checkpoint, recorder],
    )
    trainer.fit(make_module(), datamodule=DigitsDataModule(batch_size=32))
    kd = [values["train/kd"] for values in recorder.seen]
    ce = [values["train/ce"] for values in recorder.seen]
    assert len(set(kd)) == 5  # fresh every step: the checkpoint compares the step's own value
    assert len(set(ce)) < 5  # not monitored, not shown: logged on the first step and the fit's last step only
    assert checkpoint.best_model_score is not None
