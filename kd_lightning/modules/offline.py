"""``OfflineDistillation``: a trained, frozen teacher distils into a student (Hinton et al. 2015 and any terms)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from kd_lightning.core import batch as batches
from kd_lightning.core.networks import freeze
from kd_lightning.core.objective import DistillTerm
from kd_lightning.core.taps import FeatureTap
from kd_lightning.files.weights import load_weights
from kd_lightning.losses import KDLoss
from kd_lightning.modules import _performance as performance
from kd_lightning.modules._checkpoints import CHECKPOINT_KEY, fingerprint
from kd_lightning.modules._guards import check_network, check_something_to_learn
from kd_lightning.modules.base import Batch, DistillationModule
from kd_lightning.teachers.cache_store import TeacherCache
from kd_lightning.teachers.normalization import Renormalize, normalization_stats

TEACHER_PREFIX = "teacher."
NO_STUDENT_STATS = "teacher_normalization needs the statistics the batches are standardised with"
SET_STUDENT_STATS = "set student_normalization: {mean: [...], std: [...]} in the model's init_args."


class OfflineDistillation(DistillationModule):
    """Distil a frozen, trained teacher into a student.

    Loss = ``ce_weight * CE(student, y) + sum_i weight_i * loss_i(student, teacher)``. With ``terms=None`` it is
    Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): ``0.1 * CE + 0.9 * KD(T=4)``, the
    weights of the CRD benchmark recipe; with explicit ``terms`` the CE weight defaults to 1.

    The teacher is frozen: no gradients, eval mode that survives ``train()`` calls (BatchNorm statistics and dropout
    never change), run under ``torch.no_grad()``, never in the optimizer, and not saved in checkpoints (the live
    teacher is re-attached on load, so strict loading and ``ckpt_path`` resume work).

    Args:
        student: the network to train and deploy.
        teacher: the teacher's architecture.
        teacher_weights: its weights: a ``.ckpt`` (e.g. of a ``Classifier``) or ``.pt``/``.safetensors`` state dict;
            ``None`` keeps the teacher's current weights (already trained in Python).
        terms: distillation terms; ``None`` means Hinton KD, ``[DistillTerm(KDLoss(temperature=4), weight=0.9)]``.
        ce_weight: weight of the hard-label loss; ``None`` means 0.1 with the default KD term, else 1.0.
        num_classes: number of classes (linked from the datamodule by the CLI).
        optimizer: optimizer factory (student and loss adapters only).
        lr_scheduler: optional scheduler factory, stepped every epoch.
        label_smoothing: label smoothing of the cross-entropy.
        on_nonfinite: ``"stop"`` (default) or ``"skip"``: what a NaN/inf training loss does (see the base class).
        compile: compile networks in place (``nn.Module.compile()``, keys unchanged): ``true`` or a list of
            ``student``, ``teacher``.
        channels_last: networks and 4-D input batches in ``torch.channels_last`` memory format.
        teacher_normalization: ``{mean: [...], std: [...]}`` the teacher's inputs were standardised with in its
            training, when they differ from the student's (a timm ImageNet teacher beside a CIFAR student: ``{mean:
            [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}``, its ``pretrained_cfg``). Every batch, standardised
            for the student, is re-standardised for the teacher, ``(x * std_s + mean_s - mean_t) / std_t``, in
            :meth:`teacher_outputs` (training and evaluation). ``None``: the teacher sees the student's inputs.
        student_normalization: ``{mean, std}`` the batches are standardised with; ``None`` reads the datamodule's
            ``mean`` and ``std`` attributes when the fit starts (an error before the first step if it has none).
        teacher_dtype: ``"bfloat16"`` or ``"float16"`` holds the frozen teacher in that dtype (half its weight memory);
            its inputs are cast for it, it runs outside autocast, and its logits and features are returned in float32.
            ``None`` (default): the teacher's own dtype. Measured on digits: see the tests (``test_teacher_dtype``).
        teacher_cache: a :class:`~kd_lightning.TeacherCache`: the teacher's outputs over the training set are
            stored once (K replayable views per sample) when the fit starts, and training reads them instead of
            running the teacher; validation and test still run it. ``None``: the teacher runs every step.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        teacher_weights: str | Path | None = None,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float | None = None,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        on_nonfinite: str = "stop",
        compile: bool | Sequence[str] = False,
        channels_last: bool = False,
        teacher_normalization: dict[str, Sequence[float]] | None = None,
        student_normalization: dict[str, Sequence[float]] | None = None,
        teacher_dtype: str | None = None,
        teacher_cache: TeacherCache | None = None,
    ) -> None:
        check_network(teacher, "teacher")
        performance.check_not_wrapped(teacher, "teacher")
        self_teacher_dtype = performance.teacher_dtype(teacher_dtype)
        if terms is None:
            terms = [DistillTerm(KDLoss(temperature=4.0), weight=0.9)]
            ce_weight = 0.1 if ce_weight is None else ce_weight
        super().__init__(
            student=student,
            terms=terms,
            ce_weight=1.0 if ce_weight is None else ce_weight,
            num_classes=num_classes,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            label_smoothing=label_smoothing,
            on_nonfinite=on_nonfinite,
            compile=compile,
            channels_last=channels_last,
        )
        if teacher_weights is not None:
            teacher_weights = str(teacher_weights)
            load_weights(teacher, teacher_weights, role="teacher")
        check_something_to_learn(
            self.objective.ce_weight, [t.weight for t in self.objective.terms], "OfflineDistillation"
        )
        self.teacher = freeze(teacher if self_teacher_dtype is None else teacher.to(self_teacher_dtype))
        self.teacher_dtype = self_teacher_dtype
        if teacher_cache is not None and not isinstance(teacher_cache, TeacherCache):
            raise TypeError(
                f"expected teacher_cache to be a kd_lightning.TeacherCache but got {type(teacher_cache).__name__}; in "
                f"YAML: teacher_cache: {{class_path: kd_lightning.TeacherCache, init_args: {{directory: cache}}}}."
            )
        self.teacher_cache = teacher_cache
        self.teacher_tap = FeatureTap(teacher, self.objective.teacher_layers, role="teacher")
        self.teacher_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self.teacher_input: Renormalize | None = None
        if teacher_normalization is not None:
            self.teacher_stats = normalization_stats(teacher_normalization, "teacher_normalization")
            if student_normalization is not None:
                self.set_student_normalization(normalization_stats(student_normalization, "student_normalization"))
        elif student_normalization is not None:
            raise ValueError(
                "expected teacher_normalization beside student_normalization but got only the student's: give the "
                "teacher's {mean, std} too (or drop student_normalization: the teacher then sees the student's inputs)."
            )
        self.save_init_arguments()

    def set_student_normalization(self, stats: tuple[Sequence[float], Sequence[float]]) -> None:
        """Build the teacher's input re-normalisation from the student's ``(mean, std)``."""
        self.teacher_input = Renormalize(*stats, *self.teacher_stats)

    def setup(self, stage: str) -> None:
        """Without ``student_normalization``, take the student's statistics from the datamodule, then the checks."""
        if self.teacher_stats is not None and self.teacher_input is None:
            datamodule = self.trainer.datamodule
            if getattr(datamodule, "mean", None) is None or getattr(datamodule, "std", None) is None:
                source = "no datamodule" if datamodule is None else f"{type(datamodule).__name__} without mean/std"
                raise ValueError(f"{NO_STUDENT_STATS} but got {source}: {SET_STUDENT_STATS}")
            self.set_student_normalization(normalization_stats(datamodule, f"{type(datamodule).__name__}'s"))
        if stage == "fit" and self.teacher_cache is not None:
            self._cache_dataset = self.training_dataset()
            self.teacher_cache.prepare_dataset(self._cache_dataset)  # before any training loader iterates
        super().setup(stage)

    def training_dataset(self) -> Any:
        """The dataset of the fit's training loader (the datamodule's, or the loader passed to ``fit``)."""
        trainer = self.trainer
        loader = (
            trainer.datamodule.train_dataloader()
            if trainer.datamodule is not None
            else trainer.fit_loop._data_source.dataloader()
        )
        return loader.dataset

    def on_fit_start(self) -> None:
        """With a teacher cache: open it, or build it (the networks are on their device by now)."""
        super().on_fit_start()
        if self.teacher_cache is not None:
            self.teacher_cache.open(
                self._cache_teacher_outputs,
                self._cache_dataset,
                self.teacher_identity(),
                self.objective.teacher_layers,
                self.trainer,
            )

    def teardown(self, stage: str) -> None:
        """After a fit with a teacher cache, the training dataset yields its own views again."""
        if self.teacher_cache is not None and stage == "fit":
            self.teacher_cache.release_dataset()
        super().teardown(stage)

    def teacher_identity(self) -> dict[str, Any]:
        """What the teacher's outputs depend on (the cache's key): weights, class, dtype, input re-normalisation."""
        renormalize = self.teacher_input and [t.flatten().tolist() for t in self.teacher_input.buffers()]
        return {
            "weights": self.teacher_fingerprint(),
            "class": f"{type(self.teacher).__module__}.{type(self.teacher).__qualname__}",
            "dtype": str(self.teacher_dtype),
            "renormalize": renormalize,
            "precision": str(self.trainer.precision),
        }

    def _cache_teacher_outputs(self, batch: Batch) -> dict[str, Tensor]:
        """The live teacher on a build batch, on the module's device, under the fit's precision (as in training)."""
        plugin = self.trainer.precision_plugin
        batch = self.format_batch(plugin.convert_input([item.to(self.device) for item in batch]))
        with plugin.forward_context():
            return self.live_teacher_outputs(batch)

    def teacher_outputs(self, batch: Batch) -> dict[str, Tensor]:
        """Teacher logits and features: from the teacher cache in training when there is one, else the live teacher."""
        if self.teacher_cache is not None and self.training and self.teacher_cache.is_open:
            return self.teacher_cache.outputs(batch, self.current_epoch)
        return self.live_teacher_outputs(batch)

    def live_teacher_outputs(self, batch: Batch) -> dict[str, Tensor]:
        """The teacher run on the batch (re-standardised for it with ``teacher_normalization``), under no_grad."""
        if self.teacher_stats is not None and self.teacher_input is None:
            raise RuntimeError(
                f"{NO_STUDENT_STATS}, which a fit reads from the datamodule's mean/std: outside a Trainer, call "
                f"set_student_normalization((mean, std)) first, or {SET_STUDENT_STATS}"
            )
        with torch.no_grad():
            inputs = batches.inputs_of(batch)
            if self.teacher_input is not None:
                inputs = self.teacher_input(inputs)
            if self.teacher_dtype is None:
                return batches.call(self.teacher_tap, inputs)
            cast = batches.map_inputs(batch, lambda x: performance.cast_input(x, self.teacher_dtype))
            with torch.autocast(self.device.type, enabled=False):
                return performance.outputs_in_float32(batches.call(self.teacher_tap, batches.inputs_of(cast)))

    def networks(self) -> dict[str, nn.Module]:
        """The student and the frozen teacher (what ``compile`` can name)."""
        return {"student": self.student, "teacher": self.teacher}

    def tapped_networks(self) -> list[tuple[str, nn.Module, FeatureTap]]:
        return [*super().tapped_networks(), ("teacher", self.teacher, self.teacher_tap)]

    def train(self, mode: bool = True) -> OfflineDistillation:
        """Switch the student (and adapters) to ``mode``; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen teacher from the checkpoint (it is re-attached from ``teacher_weights`` on load); keep a
        fingerprint of its weights, so a resume beside a changed teacher file is caught."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {
            key: value for key, value in checkpoint["state_dict"].items() if not key.startswith(TEACHER_PREFIX)
        }
        checkpoint[CHECKPOINT_KEY]["teacher_fingerprint"] = self.teacher_fingerprint()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Insert the live teacher's weights so that strict loading of the teacher-less checkpoint succeeds.

        A teacher whose weights differ from those the checkpoint was trained beside stops a resumed fit (the run
        would continue against another teacher) and is a warning when the checkpoint is only loaded.
        """
        state_dict = checkpoint["state_dict"]
        for key, value in self.teacher.state_dict().items():
            state_dict[TEACHER_PREFIX + key] = value
        super().on_load_checkpoint(checkpoint)
        saved = (checkpoint.get(CHECKPOINT_KEY) or {}).get("teacher_fingerprint")
        if saved is None or saved == self.teacher_fingerprint():
            return
        message = (
            f"the teacher's weights (teacher_weights={self.hparams.get('teacher_weights')!r}) differ from those this "
            f"checkpoint was trained with: the file was replaced or another one is given"
        )
        if self._trainer is not None and self.trainer.training:
            raise ValueError(
                f"{message}; a resumed run must keep its teacher: point teacher_weights to the original file, or start "
                f"a new run without --ckpt_path."
            )
        warnings.warn(f"{message}; the student loads unchanged, teacher metrics are the new one's.", stacklevel=2)

    def teacher_fingerprint(self) -> str:
        """SHA-256 of the frozen teacher's weights (computed once: the teacher never changes)."""
        if getattr(self, "_teacher_fingerprint", None) is None:
            self._teacher_fingerprint = fingerprint(self.teacher)
        return self._teacher_fingerprint
