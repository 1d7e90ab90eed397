"""``DistillationModule``: the student, the objective, the teacher source, metrics, optimizers and logging shared by
every mode.

Every mode gets its teacher signal through one path, :meth:`DistillationModule.compute_losses`:
``objective(student_outputs(batch), teacher_outputs(batch), targets(batch), epoch)``, where ``teacher_outputs`` asks the
module's :class:`~kd_lightning.teachers.TeacherSource` (``None`` without one). A research subclass overrides the small
hooks (``student_outputs``, ``teacher_outputs``, ``compute_losses``), never ``training_step``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn
from torch.nn import ModuleDict
from torchmetrics.classification import MulticlassAccuracy

from kd_lightning.core.batch import Batch, Inputs, parse_parts
from kd_lightning.core.networks import check_not_wrapped, pretrained_source, require_network
from kd_lightning.core.objective import DistillTerm, Objective, missing_labels_error, total_loss
from kd_lightning.core.taps import HIDDEN, LOGITS, FeatureTap
from kd_lightning.core.tokens import Targets, is_causal_lm, window_normalizers
from kd_lightning.files import read_checkpoint
from kd_lightning.modules import (
    _agreement,
    _checkpoints,
    _cross_tokenizer,
    _evaluation,
    _first_batch,
    _guards,
    _lightning,
    _logging,
    _nonfinite,
    _performance,
    _run_state,
)
from kd_lightning.modules.deployable import STUDENT_METRICS, Deployable
from kd_lightning.teachers.base import TeacherSource

DRY_RUN_SAMPLES = 8
SHARED_ARGUMENTS = (
    "num_classes",
    "optimizer",
    "lr_scheduler",
    "label_smoothing",
    "on_nonfinite",
    "compile",
    "channels_last",
)
"""The settings every mode forwards to :class:`DistillationModule` (``**kwargs`` in the modes' signatures)."""


def accuracy_metrics(names: Sequence[str], num_classes: int) -> ModuleDict:
    """One top-1 accuracy metric per name (per peer, per exit, per teacher); unlabelled samples (``-100``) skipped."""
    return ModuleDict({name: MulticlassAccuracy(num_classes, average="micro", ignore_index=-100) for name in names})


class DistillationModule(L.LightningModule):
    """Base of every mode: the student, an :class:`~kd_lightning.core.objective.Objective`, an optional teacher
    source, metrics and optimizers.

    Args:
        student: the network to train and deploy; ``forward(x)`` returns its logits.
        terms: distillation terms; ``None``: the teacher source's defaults (Hinton KD for a trained teacher), or none.
        ce_weight: weight of the hard-label cross-entropy; ``None``: the source's default with its default terms
            (0.1 beside Hinton KD), else 1.
        num_classes: number of classes (linked from the datamodule by the CLI).
        optimizer: builds the optimizer from the trainable parameters (teachers are never included).
        lr_scheduler: optional scheduler factory, stepped every epoch.
        label_smoothing: label smoothing of the cross-entropy.
        on_nonfinite: what a NaN/inf training loss does. Either way its update is zeroed on the device (no host read
            in the step; see :mod:`~kd_lightning.modules._nonfinite`) and it is reported at the next logging step:
            ``"stop"`` then ends the run with a message naming the first bad step, the loss components and the
            cause; ``"skip"`` warns and logs ``train/skipped_steps`` (buffers the batch changed, such as BatchNorm
            statistics, are restored too). A fit whose every step was zeroed fails.
        compile: compile networks in place (``nn.Module.compile()``, keys unchanged): ``true`` or a list of names of
            :meth:`networks` (``student``, ``teacher``, peers).
        channels_last: networks and 4-D input batches in ``torch.channels_last`` memory format.
        teacher: who teaches (:class:`~kd_lightning.teachers.TeacherSource`); ``None``: no teacher.
    """

    def __init__(
        self,
        student: nn.Module,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        on_nonfinite: str = "stop",
        compile: bool | Sequence[str] = False,
        channels_last: bool = False,
        teacher: TeacherSource | None = None,
    ) -> None:
        super().__init__()
        shared = (num_classes, optimizer, lr_scheduler, label_smoothing, on_nonfinite, compile, channels_last)
        self._shared_arguments = dict(zip(SHARED_ARGUMENTS, shared, strict=True))
        self.student = require_network(student, "student")
        check_not_wrapped(student, "student")
        terms = _guards.check_terms(terms)
        default_ce = 1.0
        if terms is None and teacher is not None:
            terms, default_ce = teacher.default_terms()
        ce_weight = default_ce if ce_weight is None else ce_weight
        _guards.check_number(num_classes, "num_classes", minimum=1, integer=True)
        _guards.check_number(ce_weight, "ce_weight")
        _guards.check_factory(optimizer, "optimizer", "torch.optim.AdamW or functools.partial(torch.optim.SGD, lr=0.1)")
        _guards.check_factory(lr_scheduler, "lr_scheduler", "torch.optim.lr_scheduler.CosineAnnealingLR", optional=True)
        _guards.check_label_smoothing(label_smoothing)
        _guards.check_nonfinite_action(on_nonfinite)
        self.objective = Objective(terms or [], ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.hard_labels = Objective([], ce_weight=1.0, label_smoothing=label_smoothing)
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.on_nonfinite = on_nonfinite
        self.compile_option, self.channels_last = compile, bool(channels_last)
        self.nonfinite = _nonfinite.NonFiniteWatch()
        self.val_metrics = _evaluation.stage_metrics(num_classes)
        self.test_metrics = _evaluation.stage_metrics(num_classes)
        self.teacher = teacher
        if teacher is not None:
            teacher.bind(student, self.objective.teacher_layers, num_classes)  # before the student's tap
            members = teacher.member_names()
            self.val_teacher_acc = accuracy_metrics(members, num_classes)
            self.test_teacher_acc = accuracy_metrics(members, num_classes)
        self.student_tap = FeatureTap(student, self.objective.student_layers, role="student")
        self.causal_lm = is_causal_lm(student)
        self._warned_token_window = [False]

    def save_init_arguments(self) -> None:
        """Save hyperparameters so ``load_from_checkpoint(path)`` rebuilds the module.

        Under ``LightningCLI`` the whole config (networks and terms as ``class_path`` dicts) is saved, so the CLI's
        checkpoints reload with no arguments. From plain Python, networks, terms and callables are not picklable
        hyperparameters: they are left out and passed again, ``load_from_checkpoint(path, student=..., ...)``. The
        arguments of every class in the chain count, so a research subclass's own networks and callables are left
        out the same way (its checkpoints load with ``weights_only=True``).
        """
        frame = inspect.currentframe().f_back
        if _lightning.given_hyperparameters():
            self.save_hyperparameters(frame=frame)
            return
        init_args: dict[str, Any] = dict(self._shared_arguments)  # the values a subclass forwarded in **kwargs
        for level in collect_init_args(frame, []):
            init_args.update(level)
        self.save_hyperparameters({name: value for name, value in init_args.items() if _checkpoints.is_plain(value)})

    # ----------------------------------------------------------------- hooks for subclasses
    def networks(self) -> dict[str, nn.Module]:
        """The networks of this module by name (what ``compile`` can name): the student and the teacher's."""
        return {"student": self.student, **(self.teacher.networks() if self.teacher is not None else {})}

    def files_read(self) -> dict[str, str]:
        """Every file this module reads, with what it is: the teacher source's (its weights) and any network's weights
        loaded from a file or a pretrained folder. No output of the run may replace one of them
        (:mod:`kd_lightning.files.outputs`)."""
        files = dict(self.teacher.files_read()) if self.teacher is not None else {}
        for name, network in self.named_modules():
            source = pretrained_source(network)
            if source and Path(source).exists():
                files.setdefault(source, f"the weights of {name or type(self).__name__}")
        return files

    def deployables(self, example_input: Inputs | None = None) -> list[Deployable]:
        """The networks the report measures and the export can write, references first, the deployed student last.

        Here: the teacher source's networks that predict (each with its test accuracy), then the student.
        ``example_input`` is used by modes that cut networks out of the student (BYOT exits).
        """
        teachers = self.teacher.networks() if self.teacher is not None and self.teacher.is_teaching else {}
        if not teachers:
            return [Deployable("network", "student", self.student, dict(STUDENT_METRICS))]
        single = len(teachers) == 1
        rows = [
            Deployable(
                name,
                "teacher",
                network,
                {"acc": "test/teacher_acc", "ppl": "test/teacher_ppl"}
                if single
                else {"acc": f"test/teacher_acc_{name}"},
            )
            for name, network in teachers.items()
        ]
        compared = [row.name for row in rows]
        return [*rows, Deployable("student", "student", self.student, dict(STUDENT_METRICS), "the teacher", compared)]

    def forward(self, x: Inputs) -> Tensor:
        """The deployable student's logits ``[B, num_classes]`` (``[B, L, V]`` for a language model; a dict input is
        passed as keyword arguments: ``input_ids``, ``attention_mask``)."""
        return Batch(x).call(self.student_tap)[LOGITS]

    def student_outputs(self, batch: Batch) -> dict[str, Tensor]:
        """Student logits and the features the terms read: ``{"logits": [B, C], "<module path>": ...}``."""
        return Batch.parse(batch).call(self.student_tap)

    def targets(self, batch: Batch) -> Targets:
        """What the objective compares with (:class:`~kd_lightning.core.tokens.Targets`): the labels, and for a
        sequence batch the attention mask, the causal shift and in training the normalisers of the effective batch
        (:func:`~kd_lightning.core.tokens.window_normalizers`)."""
        batch = Batch.parse(batch)
        normalizers = None
        if self.training and self._trainer is not None and self.trainer.training and batch.is_sequence:
            normalizers = window_normalizers(batch, self.trainer, self._warned_token_window)
        teacher_causal = None
        if batch.teacher_view is not None and self.teacher is not None:
            teacher_causal = any(is_causal_lm(network) for network in self.teacher.networks().values())
        return batch.targets(self.causal_lm, normalizers, teacher_causal, getattr(self, "_dataset_context", None))

    def teacher_outputs(self, batch: Batch) -> dict[str, Tensor] | None:
        """Teacher logits and features (detached targets) from the teacher source; ``None`` when there is none, or
        while it has nothing to teach yet."""
        if self.teacher is None or not self.teacher.is_teaching:
            return None
        return self.teacher.outputs(Batch.parse(batch))

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Named, already weighted loss components: ``{"ce": ..., "<term>": ...}``; the total is their sum.

        The teacher runs first (its temporaries are freed before the student's graph is built). Without a teacher
        signal (no source, or one not teaching yet) and with terms, the student learns from the labels alone with
        cross-entropy weight 1; the source's :meth:`~kd_lightning.teachers.TeacherSource.loss_scales` scale the
        cross-entropy and the terms.
        """
        batch = Batch.parse(batch)
        teacher = self.teacher_outputs(batch)
        student, target = self.student_outputs(batch), self.targets(batch)
        self._step_outputs = (student, teacher)  # what the non-finite watch checks (references, not copies)
        if self.teacher is not None and self.training and self._trainer is not None and self.trainer.training:
            self.teacher.observe_student(batch, student)
        if teacher is None and self.objective.terms:
            return self.hard_labels(student, None, target)
        losses = self.objective(student, teacher, target, self.current_epoch)
        if self.teacher is None:
            return losses
        ce_scale, term_scale = self.teacher.loss_scales(self.current_epoch, self._max_epochs())
        if (ce_scale, term_scale) == (1.0, 1.0):
            return losses
        return {name: value * (ce_scale if name == "ce" else term_scale) for name, value in losses.items()}

    def eval_teacher_logits(self, batch: Batch) -> Tensor | None:
        """Teacher logits for the validation/test metrics, or ``None``: also for a cross-tokenizer batch, whose teacher
        reads other tokens over another vocabulary (no token-by-token comparison, so no teacher forward)."""
        batch = Batch.parse(batch)
        if self.teacher is None or batch.teacher_view is not None:
            return None
        return self.teacher.eval_logits(batch)

    def evaluation_logits(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor | None]:
        """Student and teacher logits ``[B, C]`` (teacher ``None`` when there is none) for the ``stage`` metrics.

        Modes whose one forward pass yields more (every peer, every exit) override this to log those metrics from the
        same pass, so no network runs twice per evaluation batch. A source with several teachers logs each one's
        accuracy as ``<stage>/teacher_acc_<name>``.
        """
        if self.teacher is not None and self.teacher.member_names() and batch.labels is not None:
            metrics = self.val_teacher_acc if stage == "val" else self.test_teacher_acc
            for name, logits in self.teacher.member_logits(batch).items():
                if batch.labels.ndim == 1:
                    metrics[name].update(logits, batch.labels)
                    self.log(f"{stage}/teacher_acc_{name}", metrics[name], batch_size=batch.size)
        return self(batch.inputs), self.eval_teacher_logits(batch)

    def _max_epochs(self) -> int | None:
        return self.trainer.max_epochs if self._trainer is not None else None

    # ----------------------------------------------------------------- Lightning steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The step's losses, logged; a non-finite loss is recorded on the device, never read here (see
        :mod:`~kd_lightning.modules._nonfinite`: its update is zeroed before the optimizer step)."""
        buffers = [b.detach().clone() for b in self.buffers()] if self.on_nonfinite == "skip" else None
        parts = {name: self.format_batch(part) for name, part in parse_parts(batch).items()}
        self._step_outputs = None
        losses = self.combined_losses(parts)
        loss = total_loss(losses)
        trainer = self._trainer
        step, epoch = (trainer.global_step, trainer.current_epoch) if trainer is not None else (-1, -1)
        finite = self.nonfinite.observe(loss, losses, parts, self._step_outputs, batch_idx, step, epoch)
        self._step_outputs = None
        self._restore_if_not_finite = (buffers, finite) if buffers else None
        self.log_losses(loss, losses, batch_idx, sum(part.size for part in parts.values()))
        if self.teacher is not None:
            self.teacher.after_training_step(self, finite)
        return loss

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A training batch on the host: the teacher source does its host-side work for it (a cache reads its rows).

        Lightning calls a datamodule's own ``on_before_batch_transfer`` instead, when it defines one: the work then
        happens in the step (a cache reads its rows from the batch's indices there: one wait for the device)."""
        if self.teacher is not None and self._trainer is not None and self.trainer.training:
            self.teacher.before_batch_transfer(batch)
        return batch

    def on_after_backward(self) -> None:
        """``on_nonfinite: skip``: undo, on the device, the buffer updates (BatchNorm statistics) of a micro-batch
        whose loss was not finite (after its backward, which may read those buffers)."""
        restore, self._restore_if_not_finite = getattr(self, "_restore_if_not_finite", None), None
        if restore is not None:
            buffers, finite = restore
            for buffer, saved in zip(self.buffers(), buffers, strict=True):
                buffer.copy_(torch.where(finite, buffer, saved))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Zero the step's gradients on the device when its window had a non-finite loss or gradient."""
        self.nonfinite.zero_if_not_finite([p for group in optimizer.param_groups for p in group["params"]])

    def combined_losses(self, parts: dict[str | None, Batch]) -> dict[str, Tensor]:
        """Losses of the parts of a training batch (one part, or a dict of batches from Lightning's
        ``CombinedLoader``: ``{"labelled": (x, y), "unlabelled": (x,)}``): each part's components, summed by name —
        a labelled part adds its hard-label loss, every part its terms."""
        losses: dict[str, Tensor] = {}
        for part in parts.values():
            for name, value in self.compute_losses(part).items():
                losses[name] = losses[name] + value if name in losses else value
        return losses

    def log_losses(self, loss: Tensor, losses: dict[str, Tensor], batch_idx: int, batch_size: int) -> None:
        """Log ``train/loss`` and every component ``train/<name>`` on the steps where they can be read (see
        :mod:`~kd_lightning.modules._logging`); on those steps, non-finite steps are reported."""
        values = {"train/loss": loss, **{f"train/{name}": value for name, value in losses.items()}}
        keys, shown, logged_step = _logging.keys_to_log(self, values, batch_idx)
        for key in keys:
            self.log(key, values[key], prog_bar=shown and key == "train/loss", batch_size=batch_size)
        if logged_step:
            self.nonfinite.report(self)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps whose update was zeroed (non-finite); reading it waits for the device."""
        return self.nonfinite.skipped

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def format_batch(self, batch: Any) -> Batch:
        """The batch parsed (:class:`~kd_lightning.core.batch.Batch`), as the networks take it: with
        ``channels_last``, 4-D inputs in that memory format.

        Called at the start of every training, evaluation and prediction step (not as ``on_after_batch_transfer``,
        which a datamodule may define too).
        """
        batch = Batch.parse(batch)
        return batch.map_inputs(_performance.channels_last_tensor) if self.channels_last else batch

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The deployable student's logits ``[B, num_classes]`` for a batch ``(x, ...)``, a dict batch or a bare input
        tensor."""
        return self(self.format_batch(batch).inputs)

    def _evaluate(self, batch: Any, stage: str, metrics: ModuleDict) -> None:
        """Update and log the ``stage`` metrics of the student's output kind (see :mod:`~._evaluation`)."""
        batch = self.format_batch(batch)
        logits, teacher_logits = self.evaluation_logits(batch, stage)
        target = self.targets(batch)
        kind = _evaluation.output_kind(logits, self.student_tap.output_kind)
        updates = _evaluation.evaluation_updates(kind, logits, teacher_logits, target)
        for name, (key, args) in updates.items():
            metric = metrics[key]
            metric.update(*args)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "acc", batch_size=batch.size)

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(trainable)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then let the teacher source update (an EMA) — only on real optimizer steps."""
        super().optimizer_step(*args, **kwargs)
        if self.teacher is not None:
            self.teacher.after_optimizer_step(self)

    def train(self, mode: bool = True) -> DistillationModule:
        """Switch the student (and adapters, exits, peers) to ``mode``; teacher networks always stay in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(mode)
        return self

    # ----------------------------------------------------------------- the fit
    def on_fit_start(self) -> None:
        """Every trainable network in train mode (whatever mode its builder returned it in; teachers stay in eval),
        Lightning's eval-mode warning silenced for this fit when only teacher networks are in eval mode, and the
        teacher source started (a cache opens or builds)."""
        self.train()
        frozen = {id(module) for network in self._teacher_networks() for module in network.modules()}
        eval_modules = [module for module in self.modules() if not module.training]
        _logging.restore_warnings(getattr(self, "_silenced", None))  # a filter a failed fit left behind
        self._silenced = None
        if eval_modules and all(id(module) in frozen for module in eval_modules):
            self._silenced = _logging.silence_eval_mode_warning()  # removed once the warning's moment has passed
        if self.teacher is not None:
            self.teacher.on_fit_start(self)

    def _teacher_networks(self) -> list[nn.Module]:
        return [] if self.teacher is None else [module for module in self.teacher.modules() if module is not self]

    def on_train_start(self) -> None:
        """Resume: re-apply the saved run state. Then check every trainable parameter is in an optimizer."""
        _logging.restore_warnings(getattr(self, "_silenced", None))  # Lightning warned (or not) just before
        self._silenced = None
        state, self._pending_run_state = getattr(self, "_pending_run_state", None), None
        if state:
            _run_state.restore(self.trainer, state)
        self._optimized = self.check_optimized()
        self._steps_at_start, self._skipped_at_start = self.trainer.global_step, self.skipped_steps
        self._every_step_keys = _logging.keys_logged_every_step(self)  # once per fit: callbacks do not change

    def on_train_epoch_start(self) -> None:
        self.nonfinite.epoch_started()
        if self.teacher is not None:
            self.teacher.on_train_epoch_start(self)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the first step of the fit, make sure no parameter appeared that the optimizer does not hold."""
        if getattr(self, "_optimized", None) is not None:
            self.check_optimized(expected=self._optimized)
            self._optimized = None

    def on_train_epoch_end(self) -> None:
        """Non-finite steps reported; a fit whose every step so far was zeroed stops; the teacher's epoch end."""
        self._check_steps_taken()
        if self.teacher is not None:
            self.teacher.on_train_epoch_end(self)

    def on_train_end(self) -> None:
        """A fit whose every training step was zeroed (non-finite losses) trained nothing: it fails."""
        self._every_step_keys = None
        self._check_steps_taken()

    def _check_steps_taken(self) -> None:
        skipped = self.nonfinite.report(self) - getattr(self, "_skipped_at_start", 0)
        steps = self.trainer.global_step - getattr(self, "_steps_at_start", 0)
        _nonfinite.check_some_step_taken(self, steps, skipped)

    def teardown(self, stage: str) -> None:
        """The teacher source's teardown; the eval-mode warning filter removed if the fit ended before training."""
        if self.teacher is not None:
            self.teacher.teardown(self, stage)
        _logging.restore_warnings(getattr(self, "_silenced", None))
        self._silenced = None
        for entry in getattr(self, "_silenced_for_stage", None) or []:
            _logging.restore_warnings(entry)
        self._silenced_for_stage = None
        super().teardown(stage)

    def check_optimized(self, expected: set[int] | None = None) -> set[int]:
        """Raise when a trainable parameter is in no optimizer (e.g. an adapter built after the optimizer)."""
        return _agreement.check_optimized(self, expected)

    # ----------------------------------------------------------------- checkpoints: what a resume needs
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the module class, the run state (RNG, loader position, skipped steps) and the teacher's
        fingerprint; a frozen teacher's weights are dropped (re-read from its file on load)."""
        checkpoint[_checkpoints.CHECKPOINT_KEY] = {
            "module_class": _checkpoints.class_name(type(self)),
            "skipped_steps": self.skipped_steps,
            "run_state": _run_state.capture(self.trainer, checkpoint) if self._trainer is not None else {},
        }
        if self.teacher is not None:
            _checkpoints.save_teacher(self.teacher, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the live teacher's weights back (strict loading of a teacher-less checkpoint), check the checkpoint
        fits (class, architecture, teacher) and keep its run state for ``on_train_start``."""
        if self.teacher is not None:
            resuming = self._trainer is not None and self.trainer.training
            _checkpoints.load_teacher(self.teacher, checkpoint, self.hparams, resuming)
        _checkpoints.check_module_class(type(self), checkpoint, "being loaded")
        _checkpoints.check_architecture(
            self, checkpoint["state_dict"], "being loaded", _checkpoints.unbuilt_adapters(self)
        )
        ours = checkpoint.get(_checkpoints.CHECKPOINT_KEY) or {}
        self.nonfinite.loaded = self.nonfinite.reported = int(ours.get("skipped_steps", 0))
        self._pending_run_state = ours.get("run_state") or None

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> DistillationModule:
        """Lightning's ``load_from_checkpoint``, after checking the file and that ``cls`` can rebuild its module.

        The file is read by the library's defensive loader (a missing, empty, truncated or unsafe file is an error
        naming it); a checkpoint written by another module class is refused with the class to use.
        """
        checkpoint = read_checkpoint(checkpoint_path, what="checkpoint")
        _checkpoints.check_module_class(cls, checkpoint, checkpoint_path)
        loader = _checkpoints.loading_class(cls, checkpoint)
        del checkpoint
        args = (map_location, hparams_file, strict, weights_only)
        try:
            loaded = _lightning.load_checkpoint_into(loader, checkpoint_path, *args, **kwargs)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error} (while loading {str(checkpoint_path)!r}: the teacher is not stored in distillation "
                f"checkpoints, it is re-read from teacher_weights; pass the file's new location: "
                f"{cls.__name__}.load_from_checkpoint(path, teacher_weights='new/path.safetensors'), or from the CLI "
                f"--model.init_args.teacher_weights=new/path.safetensors)"
            ) from error
        _checkpoints.check_loaded_class(cls, loaded, checkpoint_path)
        return loaded

    # ----------------------------------------------------------------- setup: fail before training, build adapters
    def setup(self, stage: str) -> None:
        """The teacher source's setup; before a fit, the checks and the dry run (see :meth:`dry_run`), each before the
        first optimizer step."""
        self.check_taps()
        for entry in getattr(self, "_silenced_for_stage", None) or []:
            _logging.restore_warnings(entry)
        self._silenced_for_stage = [_logging.silence(_logging.LEAFSPEC_WARNING, FutureWarning)]
        if type(self).on_before_batch_transfer is DistillationModule.on_before_batch_transfer:  # not a subclass's own
            self._silenced_for_stage.append(_logging.silence(_logging.HOOK_WARNING))
        names = _performance.compiled_names(self.compile_option, list(self.networks()))
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.teacher is not None:
            self.teacher.setup(self, stage)
        if stage == "fit":
            self.check_before_fit()
        _performance.compile_in_place({name: self.networks()[name] for name in names})  # after the dry run: lazy

    def check_before_fit(self) -> None:
        """The budget, the schedule, the first training batch (structure, labels, token ids), the dry run and the
        teacher source's own check, part by part of a combined loader."""
        _guards.check_budget(self.trainer)
        _guards.check_scheduler(self.optimizer_factory, self.lr_scheduler_factory, self.trainer.max_epochs or 1)
        _guards.check_distillation_token(self.student, self.objective)
        loader = self.training_dataloader()
        parts = self.example_batch(loader)
        if self.objective.ce_weight > 0 and not any(part.labels is not None for part in parts.values()):
            raise missing_labels_error()
        self._dataset_context = _first_batch.dataset_context(loader)
        for part in parts.values():
            _first_batch.check_sample_indices(part, self.objective.terms)
            _first_batch.check_inputs_fit(part, self.networks(), self.num_classes)
            self.dry_run(self.format_batch(part.head(DRY_RUN_SAMPLES)))
            if part.labels is not None and not part.is_sequence:
                _first_batch.check_label_range(part.labels, self.num_classes)
            if self.teacher is not None:
                with self.temporarily_in_eval_mode():
                    self.teacher.check(self, self.format_batch(part))

    def tapped_networks(self) -> list[tuple[str, nn.Module, FeatureTap]]:
        """``(attribute, current network, its feature tap)`` for every tapped network (checked in ``setup``)."""
        own = [("student", self.student, self.student_tap)]
        return own + (self.teacher.tapped() if self.teacher is not None else [])

    def check_taps(self) -> None:
        """Raise when a network was replaced after construction (the taps, and so training, would use the old one)."""
        _agreement.check_taps(self)

    def example_batch(self, loader: Any = None) -> dict[str | None, Batch]:
        """The first training batch of ``loader`` (default: the fit's), checked (structure, finite inputs, integer
        labels), for the dry run, parsed into its parts (one, or the loaders of a ``CombinedLoader``)."""
        return _first_batch.first_training_batch(loader if loader is not None else self.training_dataloader())

    def training_dataloader(self) -> Any:
        """The fit's training loader: the datamodule's, or the one passed to ``Trainer.fit``."""
        return _lightning.training_dataloader(self.trainer)

    @torch.no_grad()
    def dry_run(self, batch: Batch) -> None:
        """Run the losses once in eval mode: builds adapters, checks class counts, layer names and shapes.

        ``compute_losses`` is what runs, so adapters of losses a subclass adds there are built (and optimized) too.
        Errors surface here, before the first training step; BatchNorm statistics are not touched.
        """
        batch = Batch.parse(batch)
        _cross_tokenizer.check_cross_tokenizer(self, batch)
        with self.temporarily_in_eval_mode():
            student = self.student_outputs(batch)
            teacher = self.teacher_outputs(batch)
            _agreement.check_classes(self, student, teacher)
            self.compute_losses(batch)

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

    def output_kind(self, logits: Tensor) -> str:
        """``"classes"``, ``"tokens"`` or ``"hidden"`` (a network without logits) of the student's outputs."""
        return _evaluation.output_kind(logits, self.student_tap.output_kind)


__all__ = ["DRY_RUN_SAMPLES", "HIDDEN", "DistillationModule", "accuracy_metrics"]
