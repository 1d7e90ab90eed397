"""``TeacherSource``: who teaches — the one seam through which every mode with a teacher gets its signal.

A source answers :meth:`TeacherSource.outputs` for a training batch with detached targets, ``{"logits": [B, C] or
[B, L, V], "<layer>": feature, ...}``: the outputs the distillation terms read. Where they come from is the source's
business:

* :class:`~kd_lightning.teachers.frozen.FrozenTeacher` — a trained network, frozen (its weights file, input
  re-normalisation and dtype), run on every batch;
* :class:`~kd_lightning.teachers.cached.CachedTeacher` — the same network's outputs stored once over the training set;
* :class:`~kd_lightning.teachers.ensemble.TeacherEnsemble` — several sources at once;
* :class:`~kd_lightning.teachers.temporal.EMATeacher`, :class:`~kd_lightning.teachers.temporal.SnapshotTeacher`,
  :class:`~kd_lightning.teachers.temporal.PSKDTeacher` — an earlier version of the student itself.

``DistillationModule.compute_losses`` is the one path: ``objective(student_outputs(batch), teacher.outputs(batch),
targets(batch), epoch)``, each component scaled by :meth:`TeacherSource.loss_scales`. The module calls the hooks
below at fixed points of the fit; a new source overrides the ones it needs and no module changes.

Lifecycle, in order: :meth:`bind` (once, when the module is built: the student, the outputs the terms read, the
number of classes), :meth:`setup` (each Trainer stage, before the dry run), :meth:`check` (on the first training
batch, before the first optimizer step), :meth:`on_fit_start`; per epoch :meth:`on_train_epoch_start`; per step
:meth:`before_batch_transfer`, :meth:`outputs`, :meth:`observe_student`, :meth:`after_training_step`,
:meth:`after_optimizer_step`; :meth:`on_train_epoch_end`; :meth:`teardown`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.objective import DistillTerm
from kd_lightning.losses import KDLoss

Outputs = dict[str, Tensor]

EXTERNAL = "external"
"""A source that teaches from outside the student (a trained network, its stored outputs): offline distillation."""
TEMPORAL = "temporal"
"""A source made from the student itself (an average or snapshot of it, its own past predictions): temporal
self-distillation."""


def hinton_terms() -> tuple[list[DistillTerm], float]:
    """Hinton et al. 2015 at the CRD benchmark's weights: ``0.9 * KD(T=4)`` and cross-entropy weight 0.1."""
    return [DistillTerm(KDLoss(temperature=4.0), weight=0.9)], 0.1


class TeacherSource(nn.Module):
    """Base of every teacher source (see the module docstring); an ``nn.Module`` so that its networks and state
    follow the LightningModule's device, dtype and ``state_dict``.

    Attributes:
        kind: :data:`EXTERNAL` (a mode with a separate teacher accepts it) or :data:`TEMPORAL` (temporal
            self-distillation accepts it).
        in_checkpoint: whether the source's weights and state belong in checkpoints. ``False`` for a frozen network
            (re-read from its file when the checkpoint is loaded, so checkpoints stay student-sized); ``True`` for
            what a resume cannot rebuild (an EMA average, PS-KD's stored predictions).
    """

    kind: ClassVar[str] = EXTERNAL
    in_checkpoint: ClassVar[bool] = False
    scores_new_inputs: ClassVar[bool] = True
    """Whether :meth:`outputs` can answer inputs the training set does not hold (sequences sampled during the fit,
    :class:`~kd_lightning.modules.on_policy.OnPolicy`): ``False`` for stored outputs."""

    # ----------------------------------------------------------------- once
    def bind(self, student: nn.Module, layers: Sequence[str], num_classes: int) -> None:
        """Called once, when the module is built: ``layers`` are the outputs the terms read (``"logits"`` and
        ``named_modules()`` paths); ``student`` is the network being trained (temporal sources copy it)."""

    def default_terms(self) -> tuple[list[DistillTerm], float]:
        """Terms and cross-entropy weight used when none are given (Hinton KD, :func:`hinton_terms`)."""
        return hinton_terms()

    def networks(self) -> dict[str, nn.Module]:
        """The networks that predict for this source, by name (what ``compile`` may name and the report measures)."""
        return {}

    def tapped(self) -> list[tuple[str, nn.Module, Any]]:
        """``(attribute path, network, its feature tap)`` for every network the source taps (checked in ``setup``)."""
        return []

    def identity(self) -> dict[str, Any]:
        """What the source's outputs depend on (class, weights, settings): a teacher cache's key, a resume's check."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}"}

    def fingerprint(self) -> str | None:
        """A digest of what a resumed run must keep (the frozen weights), or ``None`` when nothing is checked."""
        return None

    def describe(self) -> str:
        """``teacher ResNet (weights: path)``: the source as named in messages."""
        return f"teacher {type(self).__name__}"

    def files_read(self) -> dict[str, str]:
        """Files the source reads, with what each is to the run (no output of the run may replace them)."""
        return {}

    def member_names(self) -> list[str]:
        """Names of the teachers of a source that combines several (an ensemble), else ``[]``."""
        return []

    def member_logits(self, batch: Batch) -> dict[str, Tensor]:
        """Each member teacher's logits for the evaluation metrics (``teacher_acc_<name>``), else ``{}``."""
        return {}

    # ----------------------------------------------------------------- per stage
    def setup(self, module: Any, stage: str) -> None:
        """Each Trainer stage, before the dry run (``module`` is the LightningModule, attached to its Trainer)."""

    def check(self, module: Any, batch: Batch) -> None:
        """Before the first optimizer step, on the first training batch: raise when this source cannot teach."""

    def on_fit_start(self, module: Any) -> None:
        """When the fit starts, networks on their device (a cache opens or builds here)."""

    def on_train_epoch_start(self, module: Any) -> None:
        """At the start of every training epoch (a cache replays the views of ``module.current_epoch``)."""

    def teardown(self, module: Any, stage: str) -> None:
        """When a Trainer stage ends, also after an error."""

    # ----------------------------------------------------------------- per step
    @property
    def is_teaching(self) -> bool:
        """False while the source has nothing to teach yet (before a first snapshot): the student learns from the
        labels alone, with cross-entropy weight 1."""
        return True

    def outputs(self, batch: Batch) -> Outputs | None:
        """Detached targets for a batch: ``{"logits": ..., "<layer>": ...}`` (``None`` while not teaching)."""
        raise NotImplementedError(f"{type(self).__name__} must implement outputs(batch).")

    def eval_logits(self, batch: Batch) -> Tensor | None:
        """Logits for the validation and test metrics (``teacher_acc``, ``agreement``, ``kl``), or ``None``."""
        outputs = self.outputs(batch) if self.is_teaching else None
        return None if outputs is None else outputs["logits"]

    def loss_scales(self, epoch: int, max_epochs: int | None) -> tuple[float, float]:
        """Multipliers of the cross-entropy and of the distillation terms in this (0-based) epoch."""
        return 1.0, 1.0

    def before_batch_transfer(self, batch: Any) -> None:
        """A training batch on the host, before it moves to the device: host-side work for it happens here (a cache
        reads its stored rows), so the step on the device never waits for the host."""

    def observe_student(self, batch: Batch, student: Mapping[str, Tensor]) -> None:
        """The student's outputs of a training batch (PS-KD keeps its predictions)."""

    def after_training_step(self, module: Any, taken: Any) -> None:
        """After each training step; ``taken`` is a device bool, False when the step's loss was not finite (its
        update is zeroed). Reading it on the host waits for the step: a source that must, says so."""

    def after_optimizer_step(self, module: Any) -> None:
        """After every optimizer step (not after accumulation-only batches): an EMA update."""

    def on_train_epoch_end(self, module: Any) -> None:
        """At the end of every training epoch: a snapshot refresh, PS-KD's gather under DDP."""

    def train(self, mode: bool = True) -> TeacherSource:
        """A source never trains: it and its networks stay in eval mode whatever ``mode`` (BatchNorm statistics and
        dropout fixed)."""
        return super().train(False)
