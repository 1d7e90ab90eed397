"""``DistillationModule``: the student, the objective, metrics, optimizers and logging shared by every mode.

Subclasses supply the teacher signal by overriding small hooks instead of ``training_step``:
``student_outputs(batch)``, ``teacher_outputs(batch)``, ``compute_losses(batch)`` and ``configure_optimizers``.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import KLDivergence

from kd_lightning.features import LOGITS, FeatureTap
from kd_lightning.objective import DistillTerm, Objective, total_loss

Batch = Sequence[Tensor]
DRY_RUN_SAMPLES = 8
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"


def accuracy_metrics(names: Sequence[str], num_classes: int) -> nn.ModuleDict:
    """One top-1 accuracy metric per name (per peer, per exit)."""
    return nn.ModuleDict({name: MulticlassAccuracy(num_classes, average="micro") for name in names})


def _stage_metrics(num_classes: int) -> nn.ModuleDict:
    """Student accuracy, teacher accuracy, agreement (student/teacher top-1 match rate) and KL(teacher || student)."""
    return nn.ModuleDict(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "teacher_acc": MulticlassAccuracy(num_classes, average="micro"),
            "agreement": MulticlassAccuracy(num_classes, average="micro"),
            "kl": KLDivergence(log_prob=True, reduction="mean"),
        }
    )


class DistillationModule(L.LightningModule):
    """Base of every mode: the student, an :class:`~kd_lightning.objective.Objective`, metrics and optimizers.

    Args:
        student: the network to train and deploy; ``forward(x)`` returns its logits.
        terms: distillation terms (empty for plain supervised training).
        ce_weight: weight of the hard-label cross-entropy.
        num_classes: number of classes (linked from the datamodule by the CLI).
        optimizer: builds the optimizer from the trainable parameters (teachers are never included).
        lr_scheduler: optional scheduler factory, stepped every epoch.
        label_smoothing: label smoothing of the cross-entropy.
    """

    def __init__(
        self,
        student: nn.Module,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float = 1.0,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.student = student
        self.objective = Objective(terms or [], ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.val_metrics = _stage_metrics(num_classes)
        self.test_metrics = _stage_metrics(num_classes)
        self.student_tap = FeatureTap(student, self.objective.student_layers, role="student")

    def save_init_arguments(self) -> None:
        """Save hyperparameters so ``load_from_checkpoint(path)`` rebuilds the module.

        Under ``LightningCLI`` the whole config (networks and terms as ``class_path`` dicts) is saved, so the CLI's
        checkpoints reload with no arguments. From plain Python, networks, terms and callables are not picklable
        hyperparameters: they are left out and passed again, ``load_from_checkpoint(path, student=..., ...)``.
        """
        frame = inspect.currentframe().f_back
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(frame=frame)
            return
        init_args = inspect.getargvalues(frame).locals
        plain = (int, float, str, bool, type(None))
        ignore = [k for k, v in init_args.items() if k not in ("self", "__class__") and not isinstance(v, plain)]
        self.save_hyperparameters(ignore=ignore, frame=frame)

    # ----------------------------------------------------------------- hooks for subclasses
    def forward(self, x: Tensor) -> Tensor:
        """The deployable student's logits ``[B, num_classes]``."""
        return self.student_tap(x)[LOGITS]

    def student_outputs(self, batch: Batch) -> dict[str, Tensor]:
        """Student logits and the features the terms read: ``{"logits": [B, C], "<module path>": ...}``."""
        return self.student_tap(batch[0])

    def teacher_outputs(self, batch: Batch) -> dict[str, Tensor] | None:
        """Teacher logits and features (detached targets), or ``None`` when this mode has no teacher."""
        return None

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Named, already weighted loss components: ``{"ce": ..., "<term>": ...}``; the total is their sum."""
        return self.objective(self.student_outputs(batch), self.teacher_outputs(batch), batch[1], self.current_epoch)

    def eval_teacher_logits(self, batch: Batch) -> Tensor | None:
        """Teacher logits for the validation/test metrics, or ``None``."""
        outputs = self.teacher_outputs(batch)
        return None if outputs is None else outputs[LOGITS]

    def evaluation_logits(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor | None]:
        """Student and teacher logits ``[B, C]`` (teacher ``None`` when there is none) for the ``stage`` metrics.

        Modes whose one forward pass yields more (every peer, every exit) override this to log those metrics from the
        same pass, so no network runs twice per evaluation batch.
        """
        return self(batch[0]), self.eval_teacher_logits(batch)

    # ----------------------------------------------------------------- Lightning steps
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch)
        loss = total_loss(losses)
        batch_size = len(batch[1])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=batch_size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def _evaluate(self, batch: Batch, stage: str, metrics: nn.ModuleDict) -> None:
        target = batch[1]
        logits, teacher_logits = self.evaluation_logits(batch, stage)
        updates: dict[str, tuple[Tensor, Tensor]] = {"acc": (logits, target)}
        if teacher_logits is not None:
            updates["teacher_acc"] = (teacher_logits, target)
            updates["agreement"] = (logits, teacher_logits.argmax(dim=-1))
            updates["kl"] = (F.log_softmax(teacher_logits.float(), -1), F.log_softmax(logits.float(), -1))
        for name, args in updates.items():
            metric: Metric = metrics[name]
            metric.update(*args)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "acc", batch_size=len(target))

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(trainable)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_fit_start(self) -> None:
        """Silence Lightning's eval-mode warning only when every module in eval mode is a frozen ``teacher``'s."""
        eval_modules = [name for name, module in self.named_modules() if not module.training]
        if eval_modules and all(name.startswith("teacher") for name in eval_modules):
            warnings.filterwarnings("ignore", message=EVAL_MODE_WARNING, category=PossibleUserWarning)

    # ----------------------------------------------------------------- setup: fail before training, build adapters
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.dry_run(self.example_batch())

    def example_batch(self) -> Batch:
        """A few samples of the training data, to check shapes and build lazy adapters before the optimizer exists."""
        trainer = self.trainer
        if trainer.datamodule is not None:
            loader = trainer.datamodule.train_dataloader()
        else:
            loader = trainer.fit_loop._data_source.dataloader()
        batch = next(iter(loader))
        return [item[:DRY_RUN_SAMPLES] if isinstance(item, Tensor) else item for item in batch]

    @torch.no_grad()
    def dry_run(self, batch: Batch) -> None:
        """Run the objective once in eval mode: builds adapters, checks class counts, layer names and shapes.

        Errors surface here, before the first training step; BatchNorm statistics are not touched.
        """
        with self.temporarily_in_eval_mode():
            student = self.student_outputs(batch)
            teacher = self.teacher_outputs(batch)
            self.check_classes(student, teacher)
            self.objective(student, teacher, batch[1], epoch=0)

    @contextlib.contextmanager
    def temporarily_in_eval_mode(self) -> Iterator[None]:
        """Eval mode inside the block; afterwards every module's own mode is restored.

        Modules created inside the block (lazy adapters) take the module's mode from before the block.
        """
        was_training = self.training
        modes = {module: module.training for module in self.modules()}
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)
            for module, mode in modes.items():
                module.train(mode)

    def check_classes(self, student: dict[str, Tensor], teacher: dict[str, Tensor] | None) -> None:
        """Raise before training when the student, teacher and ``num_classes`` disagree on the number of classes."""
        student_classes = student[LOGITS].shape[-1]
        if teacher is not None and teacher[LOGITS].shape[-1] != student_classes:
            raise ValueError(
                f"teacher and student must predict the same classes but the teacher has "
                f"{teacher[LOGITS].shape[-1]} outputs and the student {student_classes}; set the same num_classes "
                f"in both networks' init_args."
            )
        if student_classes != self.num_classes:
            raise ValueError(
                f"expected the student to output num_classes={self.num_classes} logits but it has "
                f"{student_classes}; set num_classes={self.num_classes} in the student's init_args."
            )
