"""``SelfDistillation``: the network teaches itself, layer-wise (BYOT exits) or over time (an earlier version of it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from rich.console import Console
from torch import Tensor, nn

from kd_lightning.core import batch as batches
from kd_lightning.core.networks import count_parameters
from kd_lightning.core.objective import DistillTerm, Objective
from kd_lightning.core.taps import LOGITS, FeatureTap, resolve_module
from kd_lightning.modules._guards import check_network
from kd_lightning.modules.base import DRY_RUN_SAMPLES, Batch, DistillationModule, accuracy_metrics
from kd_lightning.modules.exits import BYOTExits, exit_key, exit_table, truncate
from kd_lightning.teachers.temporal import TemporalTeacher


class SelfDistillation(DistillationModule):
    """Self-distillation: no separate teacher network, the student teaches itself. Give ``exits`` or ``teacher``.

    * **Layer-wise** (``exits=BYOTExits(...)``; Zhang et al., ICCV 2019, "Be Your Own Teacher"): auxiliary exits on
      intermediate layers learn the labels, the network's own deepest output (KL at temperature T) and its deepest
      features (L2 hint); see :class:`~kd_lightning.modules.exits.BYOTExits` for the loss and its weights. Per-exit
      accuracy is logged as ``val/acc_exit_<layer>``, and :meth:`exit_model` cuts a smaller, faster stand-alone network
      at any exit. Optional ``terms`` compare the student with its own detached outputs, e.g.
      ``DistillTerm(ATLoss(), student="layer1", teacher="layer3")``.
    * **Temporal** (``teacher=EMATeacher(...)``, ``SnapshotTeacher(...)`` or ``PSKDTeacher(...)``, see
      :mod:`~kd_lightning.teachers.temporal`): an earlier version of the student is the teacher of the usual ``terms``.

    Args:
        student: the network to train and deploy.
        exits: layer-wise self-distillation.
        teacher: temporal self-distillation.
        terms: distillation terms. ``None``: none (layer-wise), Hinton KD ``0.9 * KD(T=4)`` (EMA, snapshot), PS-KD's
            ``KD(T=1)`` (PS-KD).
        ce_weight: weight of the student's cross-entropy. ``None``: ``1 - exits.alpha`` (layer-wise); 0.1 with the
            default Hinton term and 1.0 otherwise (temporal).
        num_classes: number of classes (linked from the datamodule by the CLI).
        optimizer: optimizer factory (student, exits and loss adapters; never the teacher copy).
        lr_scheduler: optional scheduler factory, stepped every epoch.
        label_smoothing: label smoothing of the cross-entropies.
        on_nonfinite: ``"stop"`` (default) or ``"skip"``: what a NaN/inf training loss does (see the base class).
        compile: compile networks in place (``nn.Module.compile()``, keys unchanged): ``true`` or a list of
            ``student``, ``teacher``.
        channels_last: networks and 4-D input batches in ``torch.channels_last`` memory format.

    Example:
        >>> from kd_lightning.models import DigitsCNN
        >>> from kd_lightning.teachers.temporal import EMATeacher
        >>> ema = SelfDistillation(DigitsCNN(width=4), teacher=EMATeacher(decay=0.99))
        >>> ema(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> byot = SelfDistillation(DigitsCNN(width=4), exits=BYOTExits(["layer1", "layer2"]))
        >>> byot.dry_run([torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))])  # builds the exits
        >>> {layer: tuple(logits.shape) for layer, logits in byot.exit_logits(torch.randn(2, 1, 8, 8)).items()}
        {'layer1': (2, 10), 'layer2': (2, 10)}
        >>> [row["parameters"] for row in byot.exit_summary()]  # full network, then each truncated exit network
        [1854, 486, 806]
    """

    def __init__(
        self,
        student: nn.Module,
        exits: BYOTExits | None = None,
        teacher: TemporalTeacher | None = None,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        on_nonfinite: str = "stop",
        compile: bool | Sequence[str] = False,
        channels_last: bool = False,
    ) -> None:
        check_network(student, "student")
        if (exits is None) == (teacher is None):
            raise ValueError(
                "SelfDistillation needs exactly one of exits=BYOTExits(...) (layer-wise) or teacher=EMATeacher / "
                f"SnapshotTeacher / PSKDTeacher(...) (temporal) but got {'both' if exits is not None else 'neither'}."
            )
        if exits is not None and not isinstance(exits, BYOTExits):
            raise TypeError(f"expected exits to be a BYOTExits but got {type(exits).__name__}.")
        if teacher is not None and not isinstance(teacher, TemporalTeacher):
            raise TypeError(
                f"expected teacher to be a TemporalTeacher (EMATeacher, SnapshotTeacher, PSKDTeacher) but got "
                f"{type(teacher).__name__}; for a separate trained teacher use OfflineDistillation."
            )
        chosen_terms, default_ce = ([], 1.0 - exits.alpha) if exits is not None else teacher.default_terms()
        if terms is not None:
            chosen_terms, default_ce = terms, default_ce if exits is not None else 1.0
        if teacher is not None:
            teacher.attach(student)  # copies the bare student, before any feature tap is put on it
        super().__init__(
            student=student,
            terms=chosen_terms,
            ce_weight=default_ce if ce_weight is None else ce_weight,
            num_classes=num_classes,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            label_smoothing=label_smoothing,
            on_nonfinite=on_nonfinite,
            compile=compile,
            channels_last=channels_last,
        )
        self.exits, self.teacher = exits, teacher
        self.hard_labels = Objective([], ce_weight=1.0, label_smoothing=label_smoothing)
        if teacher is not None:
            teacher.watch(self.objective.teacher_layers, num_classes)
        if exits is not None:
            for layer in exits.tapped_layers:
                resolve_module(student, layer, role="student (BYOT exit)")
            self.student_tap.remove()
            own = [*self.objective.student_layers, *self.objective.teacher_layers, *exits.tapped_layers]
            self.student_tap = FeatureTap(student, own, role="student")
            keys = [exit_key(layer) for layer in exits.layers]
            self.val_exit_metrics = accuracy_metrics(keys, num_classes)
            self.test_exit_metrics = accuracy_metrics(keys, num_classes)
        self._example_input: Tensor | None = None
        self._pending_predictions: tuple[Tensor, Tensor] | None = None
        self._epoch_predictions: list[tuple[Tensor, Tensor]] = []
        self.save_init_arguments()

    def networks(self) -> dict[str, nn.Module]:
        """The student, and the temporal teacher's copy of it when there is one (what ``compile`` can name)."""
        copy = getattr(self.teacher, "network", None)
        return {"student": self.student, **({"teacher": copy} if isinstance(copy, nn.Module) else {})}

    # ----------------------------------------------------------------- the objective
    def teacher_outputs(self, batch: Batch) -> dict[str, Tensor]:
        """Layer-wise: the network's own outputs (terms detach them). Temporal: the earlier version's outputs."""
        if self.exits is not None:
            return self.student_outputs(batch)
        return self.teacher.outputs(batch)

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        student, target = self.student_outputs(batch), self.targets(batch)
        if self.exits is not None:
            losses = self.objective(student, student, target, self.current_epoch)
            return {**losses, **self.exits.losses(student, target, self.objective.label_smoothing)}
        if self.teacher.records_predictions:
            self._pending_predictions = (
                batches.index_of(batch),
                F.log_softmax(student[LOGITS].detach().float(), dim=-1),
            )
        if not self.teacher.is_teaching:
            return self.hard_labels(student, None, target)
        losses = self.objective(student, self.teacher.outputs(batch), target, self.current_epoch)
        ce_scale, term_scale = self.teacher.loss_scales(self.current_epoch, self._max_epochs())
        return {name: value * (ce_scale if name == "ce" else term_scale) for name, value in losses.items()}

    def eval_teacher_logits(self, batch: Batch) -> Tensor | None:
        return None if self.teacher is None else self.teacher.eval_logits(batches.inputs_of(batch))

    def dry_run(self, batch: Batch) -> None:
        """The base checks, then build the exits (before the optimizer) and check the teacher's schedule."""
        super().dry_run(batch)
        self._example_input = batches.inputs_of(batch)
        if self.teacher is not None:
            self.teacher.loss_scales(0, self._max_epochs())
        if self.exits is not None:
            with self.temporarily_in_eval_mode(), torch.no_grad():
                self.exits(self.student_outputs(batch))

    def _max_epochs(self) -> int | None:
        try:
            return self.trainer.max_epochs
        except RuntimeError:  # not attached to a Trainer
            return None

    # ----------------------------------------------------------------- teacher updates
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then update the temporal teacher (EMA) — only on real optimizer steps, not accumulation batches."""
        super().optimizer_step(*args, **kwargs)
        if self.teacher is not None:
            self.teacher.after_optimizer_step(self.student)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        """The base step; then PS-KD stores the batch's predictions, before any callback can save a checkpoint."""
        loss = super().training_step(batch, batch_idx)
        if loss is None:  # a skipped non-finite step: its predictions are not kept either
            self._pending_predictions = None
        self._store_predictions()
        return loss

    def _store_predictions(self) -> None:
        """PS-KD: store this batch's predictions for the next epoch (under DDP, gathered at the end of the epoch)."""
        if self._pending_predictions is None:
            return
        predictions, self._pending_predictions = self._pending_predictions, None
        if self.trainer.world_size > 1:
            self._epoch_predictions.append(predictions)
        else:
            self.teacher.record(*predictions)

    def on_train_epoch_end(self) -> None:
        """PS-KD under DDP: one all-gather of the epoch's predictions; snapshot: maybe refresh the teacher."""
        if self._epoch_predictions:
            index, log_probs = (torch.cat(parts) for parts in zip(*self._epoch_predictions, strict=True))
            self._epoch_predictions = []
            index, log_probs = (t.flatten(0, 1) for t in self.all_gather((index, log_probs)))
            self.teacher.record(index, log_probs)
        if self.teacher is not None:
            self.teacher.after_epoch(self.student, self.current_epoch)

    # ----------------------------------------------------------------- exits: metrics, truncation, summary
    def evaluation_logits(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor | None]:
        """Layer-wise: one pass of the network gives its logits and every exit's, logged as ``acc_exit_<layer>``."""
        if self.exits is None:
            return super().evaluation_logits(batch, stage)
        if self._example_input is None:
            self._example_input = batches.inputs_of(batches.head(batch, DRY_RUN_SAMPLES))
        outputs = batches.call(self.student_tap, batches.inputs_of(batch))
        labels = batches.labels_of(batch)
        metrics = self.val_exit_metrics if stage == "val" else self.test_exit_metrics
        for layer, (_, logits) in self.exits(outputs).items():
            if labels is None:
                break
            metric = metrics[exit_key(layer)]
            metric.update(logits, labels)
            self.log(f"{stage}/acc_exit_{exit_key(layer)}", metric, batch_size=len(labels))
        return outputs[LOGITS], None

    def exit_logits(self, inputs: Tensor) -> dict[str, Tensor]:
        """Every exit's logits ``{layer: [B, num_classes]}`` from one pass through the full network."""
        return {layer: logits for layer, (_, logits) in self.exits(self.student_tap(inputs)).items()}

    def exit_model(self, layer: str, example_input: Tensor | None = None) -> nn.Sequential:
        """A stand-alone network (eval mode): the student's modules up to ``layer``, then that exit's head.

        Checked on ``example_input`` (default: the first training samples seen) against the exit's output inside the
        full network; a ``ValueError`` if the student's forward is not a chain of its children up to ``layer``.
        """
        if layer not in self._exit_layers():
            raise ValueError(f"expected one of the exit layers {list(self.exits.layers)} but got {layer!r}.")
        model = truncate(self.student, layer, self.exits.heads[exit_key(layer)].standalone()).eval()
        inputs = example_input if example_input is not None else self._example_input
        if inputs is None:
            raise ValueError("exit_model needs an example_input [B, ...] to check the truncated network against.")
        with self.temporarily_in_eval_mode(), torch.no_grad():
            inputs = inputs.to(self.device)
            inside, alone = self.exit_logits(inputs)[layer], model.to(self.device)(inputs)
        if not torch.allclose(inside, alone, rtol=1e-4, atol=1e-5):
            raise ValueError(
                f"cannot truncate {type(self.student).__name__} at {layer!r}: its forward is not a chain of its "
                f"children up to that layer (the truncated network disagrees with the exit inside the full one)."
            )
        return model

    def exit_summary(self, example_input: Tensor | None = None) -> list[dict[str, Any]]:
        """Per exit and for the full network: parameters, share of the full network, last val and test accuracy."""
        logged = self._logged_metrics()
        full = count_parameters(self.student)
        rows = [{"exit": "full network", "parameters": full, "share": 1.0, "suffix": ""}]
        for layer in self._exit_layers():
            params = count_parameters(self.exit_model(layer, example_input))
            suffix = f"_exit_{exit_key(layer)}"
            rows.append({"exit": layer, "parameters": params, "share": params / full, "suffix": suffix})
        for row in rows:
            suffix = row.pop("suffix")
            row["val acc"], row["test acc"] = logged.get(f"val/acc{suffix}"), logged.get(f"test/acc{suffix}")
        return rows

    def _exit_layers(self) -> tuple[str, ...]:
        if self.exits is None:
            raise ValueError("exit networks exist only in layer-wise self-distillation: SelfDistillation(exits=...).")
        return self.exits.layers

    def _logged_metrics(self) -> dict[str, float]:
        try:
            return {key: float(value) for key, value in self.trainer.callback_metrics.items()}
        except RuntimeError:  # not attached to a Trainer
            return {}

    def on_test_end(self) -> None:
        """Print the exit table (parameters and test accuracy of every truncated network)."""
        if self.exits is not None and self.trainer.is_global_zero:
            Console().print(exit_table(self.exit_summary()))
