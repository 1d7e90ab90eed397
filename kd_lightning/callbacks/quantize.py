"""``ConvertQuantized``: at the end of a quantization-aware fit, the student converted to int8 and saved as TorchScript.

The student is a fake-quantized copy (:func:`kd_lightning.models.quantized.quantized_copy`), trained by any module
(``OfflineDistillation`` for quantization-aware distillation, ``Classifier`` for plain QAT). When the fit ends, the
best checkpoint's student (or the final one) is converted to a real int8 network
(:func:`~kd_lightning.models.quantized.convert_quantized`) and written as TorchScript
(:func:`~kd_lightning.models.quantized.save_quantized`), which ``torch.jit.load`` runs without kd_lightning::

    callbacks:
      - class_path: kd_lightning.ConvertQuantized
        init_args: {path: runs/digits/qad/student_int8.pt}
"""

from __future__ import annotations

import copy

import lightning as L
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import nn

from kd_lightning.files import read_checkpoint
from kd_lightning.models.quantized import QuantizedNetwork, convert_quantized, save_quantized

STUDENT_PREFIX = "student."


class ConvertQuantized(L.Callback):
    """Convert the fake-quantized student to int8 when the fit ends and save it as TorchScript at ``path``.

    The student must be built by ``quantized_copy`` (checked when the fit starts, before any training). Nothing is
    written (a warning says why) after a fit that made no optimizer step, was interrupted, or was a
    ``fast_dev_run``; the file is written atomically, so a failed conversion leaves an existing one as it was.

    Args:
        path: the TorchScript file to write (e.g. ``runs/digits/qad/student_int8.pt``).
        best: convert the best checkpoint of the ``ModelCheckpoint`` callback, if it saved one, else the final student.
    """

    def __init__(self, path: str, best: bool = True) -> None:
        self.path = path
        self.best = best
        self.start_step = 0
        self.size: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        student = getattr(pl_module, "student", None)
        if stage == "fit" and not isinstance(student, QuantizedNetwork):
            raise ValueError(
                f"ConvertQuantized: expected a fake-quantized student built by kd_lightning.models.quantized."
                f"quantized_copy but got {type(student).__name__}; build the student with class_path: "
                f"kd_lightning.models.quantized.quantized_copy, or remove the callback."
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step  # after a resume restored the step count

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        reason = self.reason_not_to_convert(trainer)
        if reason is not None:
            rank_zero_warn(f"ConvertQuantized: not writing {self.path}: {reason}; an existing file is left as it was.")
            return
        student, source = self.student(trainer, pl_module)
        self.size = save_quantized(convert_quantized(student), self.path)
        rank_zero_info(
            f"ConvertQuantized: wrote the int8 student ({source}) to {self.path} ({self.size / 1000:.1f} kB)"
        )

    def reason_not_to_convert(self, trainer: L.Trainer) -> str | None:
        """Why this fit's student must not be converted (no optimizer step, interrupted, smoke test), else ``None``."""
        if trainer.interrupted or trainer.state.status not in (TrainerStatus.RUNNING, TrainerStatus.FINISHED):
            return f"expected a fit that finished but it ended as {trainer.state.status.value}"
        if trainer.fast_dev_run:
            return "expected a real fit but got a fast_dev_run smoke test (run without --trainer.fast_dev_run)"
        if trainer.global_step <= self.start_step:
            return f"expected the fit to make an optimizer step but it made none (global_step {trainer.global_step})"
        return None

    def student(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[nn.Module, str]:
        """The fake-quantized student to convert (the best checkpoint's weights, strictly) and where it comes from."""
        checkpoint = trainer.checkpoint_callback
        best_path = getattr(checkpoint, "best_model_path", "") if self.best else ""
        student = pl_module.student
        if not best_path:
            return student, "final weights"
        saved = read_checkpoint(best_path, what="best checkpoint")["state_dict"]
        state_dict = {k[len(STUDENT_PREFIX) :]: v for k, v in saved.items() if k.startswith(STUDENT_PREFIX)}
        best = copy.deepcopy(student)
        best.load_state_dict(state_dict, strict=True)
        return best, best_path


__all__ = ["ConvertQuantized"]
