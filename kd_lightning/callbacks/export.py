"""``ExportWeights``: write the deployable network's weights (the module's ``student``) at the end of fit.

Nothing is exported after a fit that made no optimizer step, was interrupted, or whose weights are not finite: the
previous file stays as it was. Files are written atomically (:func:`kd_lightning.files.atomic_write`), and replacing
an existing one is logged with its size and date.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor

from kd_lightning.files import atomic_write, read_checkpoint

STUDENT_PREFIX = "student."


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | Path) -> Path:
    """Save a state dict atomically as ``.safetensors`` or, for any other suffix, with ``torch.save``.

    Tied weights (a language model's output layer sharing its word embeddings) are stored once per key: safetensors
    refuses tensors that share memory, so every repeat is written as its own copy (strict loading fills both keys).
    """
    path = Path(path)
    tensors, storages = {}, set()
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        tensors[key] = value.clone() if storage in storages else value
        storages.add(storage)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return atomic_write(path, lambda temporary: save_file(tensors, str(temporary)))
    return atomic_write(path, lambda temporary: torch.save(tensors, temporary))


def describe_existing(path: str | Path) -> str | None:
    """``'414.0 kB, modified 2025-01-31 12:00:03'`` for an existing file, ``None`` when there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return f"{info.st_size / 1000:,.1f} kB, modified {datetime.fromtimestamp(info.st_mtime):%Y-%m-%d %H:%M:%S}"


def first_nonfinite(state_dict: Mapping[str, Tensor]) -> str | None:
    """``"key (3 of 64 values are NaN/inf)"`` for the first tensor holding NaN or inf, ``None`` if all are finite."""
    for key, value in state_dict.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return f"{key!r} ({bad} of its {value.numel()} values are NaN/inf)"
    return None


def fingerprint(module: torch.nn.Module) -> list[float]:
    """Sum and absolute sum of every floating-point parameter: changes with any optimizer step that moved a weight."""
    sums = [
        torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
        for p in module.parameters()
        if p.is_floating_point()
    ]
    return torch.cat(sums).tolist() if sums else []


class ExportWeights(L.Callback):
    """Save ``pl_module.student`` (the network a Classifier trained, or the distilled student) when fit ends.

    The file is a plain state dict (no Lightning, no optimizer state): small, and loadable as ``teacher_weights``.
    Nothing is written (a warning says why) when the fit made no optimizer step, was interrupted, or ran as a
    ``fast_dev_run`` smoke test, or when a weight is NaN/inf: whatever was at ``path`` stays as it was. Replacing an
    existing file is logged (``replacing <path> (<size>, modified <time>)``); files are written atomically.

    Args:
        path: ``.safetensors`` or ``.pt`` file to write, e.g. in the run's directory.
        best: export the best checkpoint of the ``ModelCheckpoint`` callback, if it saved one, else the final weights.
        copy_to: also write the same weights here (e.g. ``checkpoints/digits_teacher.safetensors``, where the
            distillation configs read the teacher), only when set: ``None`` (default) leaves such a file alone.
    """

    def __init__(self, path: str, best: bool = True, copy_to: str | None = None) -> None:
        if copy_to is not None and os.path.abspath(copy_to) == os.path.abspath(path):
            raise ValueError(
                f"expected copy_to to be a second file but got copy_to={copy_to!r}, the same as path={path!r}; "
                "set copy_to to null or to another path."
            )
        self.path = path
        self.best = best
        self.copy_to = copy_to
        self.start_step: int | None = None
        self.start_fingerprint: list[float] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step, self.start_fingerprint = None, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step  # after a resume restored the step count
        self.start_fingerprint = fingerprint(pl_module.student)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        targets = [self.path, *([self.copy_to] if self.copy_to else [])]
        reason = self.reason_not_to_export(trainer)
        if reason is None and self.start_fingerprint == fingerprint(pl_module.student):
            reason = (
                f"expected the fit to change the weights but they are those it started with, after "
                f"{trainer.global_step - (self.start_step or 0)} optimizer step(s) (were they all skipped, e.g. by "
                "on_nonfinite='skip', or were the gradients zero?), so the weights are not newly trained"
            )
        if reason is None:
            state_dict, source = self.weights(trainer, pl_module)
            bad = first_nonfinite(state_dict)
            if bad is not None:
                reason = (
                    f"expected finite weights but {bad} in the {source}: the run diverged (lower the learning "
                    "rate, or check the inputs and losses)"
                )
        if reason is not None:
            left = " and ".join(targets)
            rank_zero_warn(
                f"ExportWeights: not exporting to {left}: {reason}; an existing file there is left as it was."
            )
            return
        for target in targets:
            existing = describe_existing(target)
            if existing is not None:
                rank_zero_info(f"ExportWeights: replacing {target} ({existing})")
            save_state_dict(state_dict, target)
            rank_zero_info(f"saved {type(pl_module.student).__name__} weights ({source}) to {target}")

    def reason_not_to_export(self, trainer: L.Trainer) -> str | None:
        """Why this fit's weights must not be exported (no optimizer step, interrupted, smoke test), else ``None``."""
        if trainer.interrupted or trainer.state.status not in (TrainerStatus.RUNNING, TrainerStatus.FINISHED):
            return f"expected a fit that finished but it ended as {trainer.state.status.value}"
        if getattr(trainer, "received_sigterm", False):
            return "expected a fit that finished but it received SIGTERM"
        if trainer.fast_dev_run:
            return "expected a real fit but got a fast_dev_run smoke test (run without --trainer.fast_dev_run)"
        steps = trainer.global_step - (self.start_step if self.start_step is not None else trainer.global_step)
        if trainer.global_step == 0 or steps <= 0:
            return (
                f"expected the fit to make at least one optimizer step but it made none (global_step "
                f"{trainer.global_step}; max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}, "
                f"limit_train_batches={trainer.limit_train_batches}), so the weights are not newly trained"
            )
        return None

    def weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict[str, Tensor], str]:
        """The state dict to export and where it comes from (the best checkpoint's file, or ``"final weights"``)."""
        checkpoint = trainer.checkpoint_callback
        best_path = getattr(checkpoint, "best_model_path", "") if self.best else ""
        if not best_path:
            return dict(pl_module.student.state_dict()), "final weights"
        saved = read_checkpoint(best_path, what="best checkpoint")["state_dict"]
        state_dict = {k[len(STUDENT_PREFIX) :]: v for k, v in saved.items() if k.startswith(STUDENT_PREFIX)}
        return state_dict, best_path
