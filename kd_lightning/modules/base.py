"""``DistillationModule``: the student, the objective, metrics, optimizers and logging shared by every mode.

Subclasses supply the teacher signal by overriding small hooks instead of ``training_step``:
``student_outputs(batch)``, ``teacher_outputs(batch)``, ``compute_losses(batch)`` and ``configure_optimizers``.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.core.saving import _load_from_checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.parsing import collect_init_args
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

try:  # FSDP2 (fully_shard modules under ModelParallelStrategy)
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # a torch without it: nothing to reshard
    FSDPModule = ()

from kd_lightning.core import batch as batches
from kd_lightning.core.batch import Batch, Inputs
from kd_lightning.core.objective import DistillTerm, Objective, Target, missing_labels_error, total_loss
from kd_lightning.core.taps import HIDDEN, LOGITS, FeatureTap
from kd_lightning.core.tokens import TokenTargets, is_causal_lm
from kd_lightning.files import AtomicCheckpointIO, read_checkpoint
from kd_lightning.files.weights import describe_keys
from kd_lightning.modules import _checkpoints as restore
from kd_lightning.modules import _evaluation as evaluation
from kd_lightning.modules import _guards as checks
from kd_lightning.modules import _performance as performance
from kd_lightning.modules import _run_state as run_state
from kd_lightning.modules import _sequences as sequences
from kd_lightning.modules._checkpoints import CHECKPOINT_KEY

DRY_RUN_SAMPLES = 8
EVAL_MODE_WARNING = r"Found \d+ module\(s\) in eval mode at the start of training"


def _is_plain(value: Any) -> bool:
    """Whether a hyperparameter is safe to store in a checkpoint (numbers, strings, and lists/dicts of them)."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def accuracy_metrics(names: Sequence[str], num_classes: int) -> nn.ModuleDict:
    """One top-1 accuracy metric per name (per peer, per exit); unlabelled samples (``-100``) are skipped."""
    return nn.ModuleDict({name: MulticlassAccuracy(num_classes, average="micro", ignore_index=-100) for name in names})


class DistillationModule(L.LightningModule):
    """Base of every mode: the student, an :class:`~kd_lightning.core.objective.Objective`, metrics and optimizers.

    Args:
        student: the network to train and deploy; ``forward(x)`` returns its logits.
        terms: distillation terms (empty for plain supervised training).
        ce_weight: weight of the hard-label cross-entropy.
        num_classes: number of classes (linked from the datamodule by the CLI).
        optimizer: builds the optimizer from the trainable parameters (teachers are never included).
        lr_scheduler: optional scheduler factory, stepped every epoch.
        label_smoothing: label smoothing of the cross-entropy.
        on_nonfinite: what a NaN/inf training loss does, caught before ``backward``: ``"stop"`` ends the run with a
            message naming the loss components, the step and the batch; ``"skip"`` skips that optimizer step (counted
            and logged as ``train/skipped_steps``; buffers the batch changed, such as BatchNorm statistics, are
            restored). Never trains on a non-finite loss.
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
        on_nonfinite: str = "stop",
        compile: bool | Sequence[str] = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.student = checks.check_network(student, "student")
        performance.check_not_wrapped(student, "student")
        terms = checks.check_terms(terms)
        checks.check_number(num_classes, "num_classes", minimum=1, integer=True)
        checks.check_number(ce_weight, "ce_weight")
        checks.check_factory(optimizer, "optimizer", "torch.optim.AdamW or functools.partial(torch.optim.SGD, lr=0.1)")
        checks.check_factory(lr_scheduler, "lr_scheduler", "torch.optim.lr_scheduler.CosineAnnealingLR", optional=True)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"expected label_smoothing in [0, 1) but got label_smoothing={label_smoothing}.")
        if on_nonfinite not in checks.NONFINITE_ACTIONS:
            raise ValueError(
                f"expected on_nonfinite to be one of {list(checks.NONFINITE_ACTIONS)} but got {on_nonfinite!r}: "
                f"'stop' ends the run at a NaN/inf loss, 'skip' skips that step (counted as train/skipped_steps)."
            )
        self.objective = Objective(terms or [], ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.num_classes = num_classes
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.on_nonfinite = on_nonfinite
        self.compile_option, self.channels_last = compile, bool(channels_last)
        self.skipped_steps = 0
        self.val_metrics = evaluation.stage_metrics(num_classes)
        self.test_metrics = evaluation.stage_metrics(num_classes)
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
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(frame=frame)
            return
        init_args: dict[str, Any] = {}
        for level in collect_init_args(frame, []):
            init_args.update(level)
        ignore = [name for name, value in init_args.items() if not _is_plain(value)]
        self.save_hyperparameters(ignore=ignore, frame=frame)

    # ----------------------------------------------------------------- hooks for subclasses
    def networks(self) -> dict[str, nn.Module]:
        """The networks of this module by name (what ``compile`` can name): here the student alone."""
        return {"student": self.student}

    def forward(self, x: Inputs) -> Tensor:
        """The deployable student's logits ``[B, num_classes]`` (``[B, L, V]`` for a language model; a dict input is
        passed as keyword arguments: ``input_ids``, ``attention_mask``)."""
        return batches.call(self.student_tap, x)[LOGITS]

    def student_outputs(self, batch: Batch) -> dict[str, Tensor]:
        """Student logits and the features the terms read: ``{"logits": [B, C], "<module path>": ...}``."""
        return batches.call(self.student_tap, batches.inputs_of(batch))

    def targets(self, batch: Batch) -> Target:
        """What the objective compares with: labels ``[B]`` (``None`` when the batch has none), or the token targets
        of a sequence batch (labels, attention mask, causal shift, and in training the normalisers of the effective
        batch: see :mod:`kd_lightning.modules._sequences`)."""
        normalizers = None
        if self.training and self._trainer is not None and self.trainer.training:
            normalizers = sequences.window_normalizers(batch, self.trainer, self._warned_token_window)
        return sequences.batch_targets(batch, self.causal_lm, normalizers)

    def teacher_outputs(self, batch: Batch) -> dict[str, Tensor] | None:
        """Teacher logits and features (detached targets), or ``None`` when this mode has no teacher."""
        return None

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Named, already weighted loss components: ``{"ce": ..., "<term>": ...}``; the total is their sum."""
        teacher = self.teacher_outputs(batch)  # first: its temporaries are freed before the student's graph is built
        return self.objective(self.student_outputs(batch), teacher, self.targets(batch), self.current_epoch)

    def eval_teacher_logits(self, batch: Batch) -> Tensor | None:
        """Teacher logits for the validation/test metrics, or ``None``."""
        outputs = self.teacher_outputs(batch)
        return None if outputs is None else outputs[LOGITS]

    def evaluation_logits(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor | None]:
        """Student and teacher logits ``[B, C]`` (teacher ``None`` when there is none) for the ``stage`` metrics.

        Modes whose one forward pass yields more (every peer, every exit) override this to log those metrics from the
        same pass, so no network runs twice per evaluation batch.
        """
        return self(batches.inputs_of(batch)), self.eval_teacher_logits(batch)

    # ----------------------------------------------------------------- Lightning steps
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        buffers = [b.detach().clone() for b in self.buffers()] if self.on_nonfinite == "skip" else None
        batch = self.format_batch(batch)
        losses = self.combined_losses(batch) if batches.is_combined(batch) else self.compute_losses(batch)
        loss = total_loss(losses)
        batch_size = sum(batches.size_of(part) for part in batches.parts(batch))
        if not self.loss_is_finite(loss, losses, batch, batch_idx):
            if buffers:
                torch._foreach_copy_(list(self.buffers()), buffers)  # undo the batch's BatchNorm statistics updates
            return None
        self.log_losses(loss, losses, batch_idx, batch_size)
        return loss

    def combined_losses(self, batch: dict[str, Batch]) -> dict[str, Tensor]:
        """Losses of a dict of batches (Lightning's ``CombinedLoader``: ``{"labelled": (x, y), "unlabelled": (x,)}``):
        each part's components, summed by name — a labelled part adds its hard-label loss, every part its terms."""
        losses: dict[str, Tensor] = {}
        for part in batch.values():
            for name, value in self.compute_losses(part).items():
                losses[name] = losses[name] + value if name in losses else value
        return losses

    def log_losses(self, loss: Tensor, losses: dict[str, Tensor], batch_idx: int, batch_size: int) -> None:
        """Log ``train/loss`` and every component ``train/<name>`` — on the steps where they can be read.

        Lightning hands per-step values to the loggers only every ``log_every_n_steps`` steps, and one ``self.log``
        costs about 0.4 ms on CPU (a third of a small model's step). So the values are logged on those steps, on the
        first and last batch of every epoch and on the fit's last step (what the loggers write is unchanged);
        ``train/loss`` is logged every step while a progress bar shows it, and so is any key a callback monitors
        (``ModelCheckpoint(monitor=...)``, ``EarlyStopping``).
        """
        every_step = getattr(self, "_every_step_keys", None)
        if every_step is None:  # outside a fit's training loop (or fast_dev_run: everything, every step)
            every_step = self.keys_logged_every_step()
        all_keys = every_step is None or self.is_logged_step(batch_idx)
        values = {"train/loss": loss, **{f"train/{name}": value for name, value in losses.items()}}
        shown = every_step is None or "train/loss" in every_step
        for key, value in values.items():
            if all_keys or key in every_step:
                self.log(key, value, prog_bar=shown and key == "train/loss", batch_size=batch_size)

    def keys_logged_every_step(self) -> set[str] | None:
        """Keys read every step (the progress bar's loss, monitored keys); ``None``: log every key every step."""
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run:
            return None
        monitored = (getattr(callback, "monitor", None) for callback in trainer.callbacks)
        keys = {monitor for monitor in monitored if isinstance(monitor, str)}
        if trainer.progress_bar_callback is not None:
            keys.add("train/loss")
        return keys

    def is_logged_step(self, batch_idx: int) -> bool:
        """Whether the loggers write this step's values (or the step opens or closes an epoch or the fit)."""
        trainer = self.trainer
        last_step = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step + 1
        return (
            batch_idx == 0
            or last_step
            or trainer._logger_connector.should_update_logs
            or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        )

    def loss_is_finite(self, loss: Tensor, losses: dict[str, Tensor], batch: Batch, batch_idx: int) -> bool:
        """Guard before ``backward``: a non-finite loss stops the run (default) or skips the step (``"skip"``).

        Under DDP the decision is taken by all ranks together, so every rank skips the same steps.
        """
        finite = bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return True
        message = checks.describe_nonfinite(losses, batch, self.current_epoch, self.global_step, batch_idx)
        if self.on_nonfinite == "stop":
            raise checks.NonFiniteLossError(message)
        self.skipped_steps += 1
        skipped = message.replace("To skip such steps instead of stopping, set", "Skipped, as set by")
        warnings.warn(skipped, stacklevel=2)
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=batches.size_of(batches.parts(batch)[0]))
        return False

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def format_batch(self, batch: Any) -> Any:
        """The batch as the networks take it: with ``channels_last``, 4-D inputs in that memory format.

        Called at the start of every training, evaluation and prediction step (not as ``on_after_batch_transfer``,
        which a datamodule may define too).
        """
        return performance.channels_last_batch(batch) if self.channels_last else batch

    def predict_step(self, batch: Batch | Tensor, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """The deployable student's logits ``[B, num_classes]`` for a batch ``(x, ...)``, a dict batch or a bare input
        tensor."""
        batch = self.format_batch(batch)
        return self(batch if isinstance(batch, Tensor) else batches.inputs_of(batch))

    def _evaluate(self, batch: Batch, stage: str, metrics: nn.ModuleDict) -> None:
        """Update and log the ``stage`` metrics of the student's output kind (see :mod:`~.evaluation`)."""
        batch = self.format_batch(batch)
        logits, teacher_logits = self.evaluation_logits(batch, stage)
        target = self.targets(batch)
        labels = target.labels if isinstance(target, TokenTargets) else target
        tokens = target if isinstance(target, TokenTargets) else None
        kind = evaluation.output_kind(logits, self.student_tap.output_kind)
        updates = evaluation.evaluation_updates(kind, logits, teacher_logits, labels, tokens)
        for name, (key, args) in updates.items():
            metric: Metric = metrics[key]
            metric.update(*args)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "acc", batch_size=batches.size_of(batch))

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

    # ----------------------------------------------------------------- checkpoints: what a resume needs
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the module class and the run state (RNG, loader position, skipped steps) beside the weights."""
        checkpoint[CHECKPOINT_KEY] = {
            "module_class": restore.class_name(type(self)),
            "skipped_steps": self.skipped_steps,
            "run_state": run_state.capture(self.trainer, checkpoint) if self._trainer is not None else {},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint fits (class, architecture); keep its run state for ``on_train_start``."""
        restore.check_module_class(type(self), checkpoint, "being loaded")
        restore.check_architecture(self, checkpoint["state_dict"], "being loaded", restore.unbuilt_adapters(self))
        ours = checkpoint.get(CHECKPOINT_KEY) or {}
        self.skipped_steps = int(ours.get("skipped_steps", 0))
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
        restore.check_module_class(cls, checkpoint, checkpoint_path)
        del checkpoint
        args = (map_location, hparams_file, strict, weights_only)
        try:
            loaded = _load_from_checkpoint(cls, checkpoint_path, *args, **kwargs)
            return loaded
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error} (while loading {str(checkpoint_path)!r}: the teacher is not stored in distillation "
                f"checkpoints, it is re-read from teacher_weights; pass the file's new location: "
                f"{cls.__name__}.load_from_checkpoint(path, teacher_weights='new/path.safetensors'), or from the CLI "
                f"--model.init_args.teacher_weights=new/path.safetensors)"
            ) from error

    def on_train_start(self) -> None:
        """Resume: re-apply the saved run state. Then check every trainable parameter is in an optimizer."""
        state, self._pending_run_state = getattr(self, "_pending_run_state", None), None
        if state:
            run_state.restore(self.trainer, state)
        self._optimized = self.check_optimized()
        self._every_step_keys = self.keys_logged_every_step()  # once per fit: the callbacks do not change during it

    def on_train_end(self) -> None:
        self._every_step_keys = None

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        """After the first step of the fit, make sure no parameter appeared that the optimizer does not hold."""
        if getattr(self, "_optimized", None) is not None:
            self.check_optimized(expected=self._optimized)
            self._optimized = None

    def check_optimized(self, expected: set[int] | None = None) -> set[int]:
        """Raise when a trainable parameter is in no optimizer (e.g. an adapter built after the optimizer)."""
        for module in self.modules():  # FSDP2 leaves a root's unsharded parameters registered after an eval forward
            if isinstance(module, FSDPModule):
                module.reshard()  # register the sharded parameters again: those are the optimizer's
        optimized = {id(p) for opt in self.trainer.optimizers for group in opt.param_groups for p in group["params"]}
        if not optimized:
            return optimized
        left_out = [name for name, p in self.named_parameters() if p.requires_grad and id(p) not in optimized]
        if left_out:
            when = "during the first training step" if expected is not None else "after the optimizer was built"
            raise RuntimeError(
                f"{len(left_out)} trainable parameter(s) are in no optimizer and would never be trained: "
                f"{describe_keys(left_out, 4)} (created {when}). Build every loss module in compute_losses, which the "
                f"dry run in setup() calls before the optimizer exists, or freeze them with requires_grad_(False)."
            )
        return optimized

    # ----------------------------------------------------------------- setup: fail before training, build adapters
    def setup(self, stage: str) -> None:
        """Make checkpoint files atomic; before a fit, run the checks and the dry run (see :meth:`dry_run`)."""
        strategy = self.trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()  # same files; temporary file + rename, defensive loads
        self.check_taps()
        names = performance.compiled_names(self.compile_option, list(self.networks()))
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        if stage == "fit":
            checks.check_budget(self.trainer)
            batch = self.example_batch()
            checks.check_scheduler(self.optimizer_factory, self.lr_scheduler_factory, self.trainer.max_epochs or 1)
            labelled = [batches.labels_of(part) is not None for part in batches.parts(batch)]
            if self.objective.ce_weight > 0 and not any(labelled):
                raise missing_labels_error()
            for part in batches.parts(batch):
                checks.check_token_ids(part, self.networks(), self.num_classes)
                self.dry_run(self.format_batch(batches.head(part, DRY_RUN_SAMPLES)))
                labels = batches.labels_of(part)
                if labels is not None and not sequences.is_sequence_batch(part):
                    checks.check_label_range(labels, self.num_classes)
        performance.compile_in_place({name: self.networks()[name] for name in names})  # after the dry run: lazy

    def tapped_networks(self) -> list[tuple[str, nn.Module, FeatureTap]]:
        """``(attribute, current network, its feature tap)`` for every tapped network (checked in ``setup``)."""
        return [("student", self.student, self.student_tap)]

    def check_taps(self) -> None:
        """Raise when a network was replaced after construction (the taps, and so training, would use the old one)."""
        for name, network, tap in self.tapped_networks():
            if tap.model is network:
                continue
            wrapped = hasattr(network, "_orig_mod")
            wrapper = f" by a torch.compile wrapper (set compile: [{name}] instead)" if wrapped else ""
            raise ValueError(
                f"module.{name} was replaced after the module was built{wrapper}: the feature taps and the losses "
                f"still read the network given to __init__, so training would silently use that one; build a new "
                f"{type(self).__name__} with the network as its argument instead of assigning it."
            )

    def example_batch(self) -> Batch:
        """The first training batch, checked (structure, finite inputs, integer labels), for the dry run (a dict of
        batches from a ``CombinedLoader`` is checked part by part).

        ``setup`` runs the dry run on its first samples and checks every label against ``num_classes`` after it.
        """
        trainer = self.trainer
        if trainer.datamodule is not None:
            loader = trainer.datamodule.train_dataloader()
        else:
            loader = trainer.fit_loop._data_source.dataloader()
        loaders = loader if isinstance(loader, Mapping) else {None: loader}
        batch = {name: self._first_batch(part, name) for name, part in loaders.items()}
        for name, part in batch.items():
            checks.check_batch(part, part=name)
        return batch if isinstance(loader, Mapping) else batch[None]

    @staticmethod
    def _first_batch(loader: Any, name: str | None) -> Batch:
        try:
            return next(iter(loader))
        except StopIteration:
            which = f"the {name!r} training dataloader" if name is not None else "the training dataloader"
            raise ValueError(
                f"{which} is empty: there is nothing to train on; check the dataset's size, train_fraction/split "
                f"settings, and that batch_size is not larger than the dataset with drop_last."
            ) from None

    @torch.no_grad()
    def dry_run(self, batch: Batch) -> None:
        """Run the losses once in eval mode: builds adapters, checks class counts, layer names and shapes.

        ``compute_losses`` is what runs, so adapters of losses a subclass adds there are built (and optimized) too.
        Errors surface here, before the first training step; BatchNorm statistics are not touched.
        """
        with self.temporarily_in_eval_mode():
            student = self.student_outputs(batch)
            teacher = self.teacher_outputs(batch)
            self.check_classes(student, teacher)
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

    def check_classes(self, student: dict[str, Tensor], teacher: dict[str, Tensor] | None) -> None:
        """Raise before training when the student, teacher and ``num_classes`` disagree on the number of classes (or
        tokens), or when a hard-label loss is asked of a network without logits."""
        kind = evaluation.output_kind(student[LOGITS], self.student_tap.output_kind)
        if kind == HIDDEN:
            if self.objective.ce_weight > 0:
                raise ValueError(
                    f"the student returns hidden states {tuple(student[LOGITS].shape)} (a model without logits, such "
                    f"as a Hugging Face BertModel), so there is no hard-label loss to compute but ce_weight="
                    f"{self.objective.ce_weight:g}; set ce_weight: 0 (hidden-state terms only), or give the model a "
                    f"head (kd_lightning.models.text with task: masked_lm or causal_lm)."
                )
            return
        student_classes = student[LOGITS].shape[-1]
        if teacher is not None and teacher[LOGITS].shape[-1] != student_classes:
            if kind == evaluation.TOKENS:
                raise ValueError(
                    f"teacher and student must share a vocabulary but the teacher predicts "
                    f"{teacher[LOGITS].shape[-1]} tokens and the student {student_classes}; build the student for the "
                    f"teacher's tokenizer: kd_lightning.models.text.student_from_teacher, or model_from_config with "
                    f"vocab_size: {teacher[LOGITS].shape[-1]}."
                )
            raise ValueError(
                f"teacher and student must predict the same classes but the teacher has "
                f"{teacher[LOGITS].shape[-1]} outputs and the student {student_classes}; set the same num_classes "
                f"in both networks' init_args."
            )
        if kind == evaluation.TOKENS:
            if student_classes < self.num_classes:
                raise ValueError(
                    f"the student predicts {student_classes} tokens but the data's tokenizer has num_classes="
                    f"{self.num_classes} tokens; build the model for that tokenizer (model_from_config vocab_size: "
                    f"{self.num_classes}), or use the tokenizer the model was trained with."
                )
            return
        if student_classes != self.num_classes:
            raise ValueError(
                f"expected the student to output num_classes={self.num_classes} logits but it has "
                f"{student_classes}; set num_classes={self.num_classes} in the student's init_args."
            )
