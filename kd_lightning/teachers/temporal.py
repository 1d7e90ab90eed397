"""Temporal teacher sources: an earlier version of the student teaches the current one.

* :class:`EMATeacher` — an exponential moving average of the student's weights, updated after every optimizer step.
* :class:`SnapshotTeacher` — a copy of the student refreshed every N epochs (born-again generations).
* :class:`PSKDTeacher` — PS-KD's progressive targets: each sample's prediction from the previous epoch.

Each is a :class:`~kd_lightning.teachers.base.TeacherSource` of kind ``temporal``, configured on its own
(``class_path`` in YAML) and given to :class:`~kd_lightning.modules.TemporalSelfDistillation`, which binds it to the
student (:meth:`~kd_lightning.teachers.base.TeacherSource.bind`) and calls its update hooks. Copies hold the student
network only (no forward hooks, so no feature taps and no teacher of a teacher) and are frozen (no gradients, eval
mode, never in the optimizer). The whole state — EMA weights, snapshot weights and generation, PS-KD's per-sample
predictions — is part of ``state_dict()``, so checkpoints resume exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.networks import freeze, hookless_copy
from kd_lightning.core.objective import DistillTerm
from kd_lightning.core.taps import LOGITS, FeatureTap
from kd_lightning.losses import KDLoss
from kd_lightning.teachers.base import TEMPORAL, Outputs, TeacherSource

LOG_ZERO = -1e4
"""Log-probability standing for probability 0 in one-hot targets (finite, so KL terms stay finite)."""


class StudentCopy(TeacherSource):
    """A frozen copy of the student (``self.network``) that answers through its own feature tap."""

    kind = TEMPORAL
    in_checkpoint = True

    def __init__(self) -> None:
        super().__init__()
        self.network: nn.Module | None = None
        self._tap: FeatureTap | None = None

    def bind(self, student: nn.Module, layers: Sequence[str], num_classes: int) -> None:
        """Copy the bare student (without its forward hooks) and tap the copy for ``layers``."""
        self.network = freeze(hookless_copy(student))
        self._tap = FeatureTap(self.network, layers, role="teacher (copy of the student)")

    def networks(self) -> dict[str, nn.Module]:
        return {"teacher": self.network} if self.network is not None else {}

    def tapped(self) -> list[tuple[str, nn.Module, Any]]:
        return [("teacher.network", self.network, self._tap)]

    def outputs(self, batch: Batch) -> Outputs | None:
        if not self.is_teaching:
            return None
        with torch.no_grad():
            return Batch.parse(batch).call(self._tap)


class EMATeacher(StudentCopy):
    """Teacher = exponential moving average of the student's weights (a "mean teacher").

    Tarvainen & Valpola, NeurIPS 2017, "Mean teachers are better role models"; the same average as timm's
    ``ModelEmaV3``. After every optimizer step, for every floating-point parameter and buffer (BatchNorm running
    statistics included): ``ema <- decay * ema + (1 - decay) * student``; integer buffers (``num_batches_tracked``) are
    copied. The average starts from the student's initial weights. Only the student network is averaged (unlike
    Lightning's ``EMAWeightAveraging``, which copies the whole LightningModule).

    Args:
        decay: weight of the old average, in ``(0, 1)``; the average spans about ``1 / (1 - decay)`` steps (0.999 for
            ImageNet-length runs, 0.99 or lower for a few hundred steps).
    """

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(
                f"expected an EMA decay in (0, 1) but got decay={decay}; the average spans about 1 / (1 - decay) "
                f"optimizer steps, e.g. decay=0.99 for ~100 steps."
            )
        self.decay = float(decay)

    @torch.no_grad()
    def after_optimizer_step(self, module: Any) -> None:
        average = [*self.network.parameters(), *self.network.buffers()]  # the copy's order is the student's
        live = [*module.student.parameters(), *module.student.buffers()]
        floating = [index for index, tensor in enumerate(average) if tensor.is_floating_point()]
        torch._foreach_lerp_([average[i] for i in floating], [live[i] for i in floating], 1.0 - self.decay)
        for index in set(range(len(average))) - set(floating):
            average[index].copy_(live[index])

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


class SnapshotTeacher(StudentCopy):
    """Teacher = a snapshot of the student, refreshed at the end of every ``every_n_epochs``-th epoch.

    Born-again generations (Furlanello et al., ICML 2018, "Born-Again Neural Networks"): generation 0 (the first
    ``every_n_epochs`` epochs) learns from the labels alone, with cross-entropy weight 1; generation ``k + 1`` learns
    from the snapshot of generation ``k`` through the terms. Departure from the paper: the student is not
    re-initialised at each generation but continues from its weights (and the optimizer and schedule continue), as in
    snapshot distillation (Yang et al., CVPR 2019); for from-scratch generations, chain runs of
    ``OfflineDistillation`` with the previous generation's checkpoint as teacher.

    Args:
        every_n_epochs: epochs per generation (``>= 1``); snapshots are taken after epochs ``N - 1, 2N - 1, ...``
            (0-based).
    """

    def __init__(self, every_n_epochs: int = 5) -> None:
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(
                f"expected a snapshot period every_n_epochs >= 1 (an integer) but got every_n_epochs={every_n_epochs}; "
                f"the teacher is refreshed at the end of every every_n_epochs-th epoch."
            )
        self.every_n_epochs = every_n_epochs
        self.generation = 0

    @property
    def is_teaching(self) -> bool:
        return self.generation > 0

    @torch.no_grad()
    def on_train_epoch_end(self, module: Any) -> None:
        if (module.current_epoch + 1) % self.every_n_epochs == 0:
            self.network.load_state_dict(module.student.state_dict())
            self.generation += 1

    def get_extra_state(self) -> dict[str, Any]:
        return {"generation": self.generation}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])

    def extra_repr(self) -> str:
        return f"every_n_epochs={self.every_n_epochs}, generation={self.generation}"


class PSKDTeacher(TeacherSource):
    """PS-KD: the targets are the labels softened by the student's own predictions from the previous epoch.

    Kim et al., ICCV 2021, "Self-Knowledge Distillation with Progressive Refinement of Targets". With ``y`` the one-hot
    label ``[B, C]`` and ``p_{t-1}(x)`` the softmax prediction the student made for sample ``x`` in the previous epoch,
    the target of epoch ``t`` (0-based, ``E`` epochs) is ``(1 - a_t) * y + a_t * p_{t-1}(x)`` with
    ``a_t = alpha_max * (t + 1) / E`` (the official code's schedule); a sample without a stored prediction (epoch 0)
    uses ``p = y``. The predictions are kept per sample index, so batches must carry it (``(x, y, index)``).

    As a source the teacher "logits" are ``log p_{t-1}`` ``[B, C]``, the cross-entropy is scaled by ``1 - a_t`` and
    every term by ``a_t``. With the default term, ``KD`` at ``T = 1`` with weight 1, the loss
    ``(1 - a_t) * CE(s, y) + a_t * KL(p_{t-1} || softmax(s))`` equals PS-KD's soft-target cross-entropy
    ``-sum(target * log_softmax(s))`` minus the constant ``a_t * H(p_{t-1})``: the same gradients.

    The per-sample log-probabilities ``[N, C]`` (float32) stay on the CPU, as in the official code (on the GPU they
    would cost ``N * C * 4`` bytes, and DDP would broadcast them), grow to the largest index seen and are saved in
    checkpoints. Under DDP every process's predictions are gathered once, at the end of each epoch (so a checkpoint
    saved in the middle of an epoch holds the predictions up to the previous epoch).

    Args:
        alpha_max: ``a_t`` at the last epoch (0.8 in the paper), in ``[0, 1]``.
        epochs: ``E``; ``None`` uses the trainer's ``max_epochs``.
    """

    kind = TEMPORAL
    in_checkpoint = True

    def __init__(self, alpha_max: float = 0.8, epochs: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= alpha_max <= 1.0:
            raise ValueError(f"expected PS-KD alpha_max in [0, 1] (0.8 in the paper) but got alpha_max={alpha_max}.")
        if epochs is not None and epochs < 1:
            raise ValueError(f"expected PS-KD epochs >= 1 (or None for the trainer's max_epochs) but got {epochs}.")
        self.alpha_max, self.epochs = float(alpha_max), epochs
        self.num_classes = 0
        self.log_probs = torch.zeros(0, 0)
        self.seen = torch.zeros(0, dtype=torch.bool)
        self._pending: tuple[Tensor, Tensor] | None = None
        self._epoch_predictions: list[tuple[Tensor, Tensor]] = []

    def bind(self, student: nn.Module, layers: Sequence[str], num_classes: int) -> None:
        features = [name for name in layers if name != LOGITS]
        if features:
            raise ValueError(
                f"PS-KD keeps only the previous predictions, but terms read the teacher's {features}; use "
                f"teacher='logits' in every DistillTerm (or an EMATeacher/SnapshotTeacher for feature terms)."
            )
        self.num_classes = num_classes

    def default_terms(self) -> tuple[list[DistillTerm], float]:
        """PS-KD's soft-target cross-entropy: ``CE`` (scaled by ``1 - a_t``) plus ``KD(T=1)`` (scaled by ``a_t``)."""
        return [DistillTerm(KDLoss(temperature=1.0), weight=1.0)], 1.0

    def alpha(self, epoch: int, max_epochs: int | None) -> float:
        """``a_t = alpha_max * min((epoch + 1) / E, 1)``."""
        total = self.epochs or max_epochs
        if total is None or total < 1:
            raise ValueError(
                f"PS-KD's a_t grows linearly over the training epochs but the number of epochs is unknown "
                f"(trainer max_epochs={max_epochs}); set trainer.max_epochs or PSKDTeacher(epochs=...)."
            )
        return self.alpha_max * min((epoch + 1) / total, 1.0)

    def loss_scales(self, epoch: int, max_epochs: int | None) -> tuple[float, float]:
        alpha = self.alpha(epoch, max_epochs)
        return 1.0 - alpha, alpha

    def check(self, module: Any, batch: Batch) -> None:
        """Sample indices and a class label on every sample, before the first step."""
        self._checked_inputs(batch)

    def _checked_inputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        batch = Batch.parse(batch)
        index, target = batch.index, batch.labels
        if index is None:
            raise ValueError(
                "PS-KD keeps each training sample's previous prediction and needs batches (x, y, index) but got "
                "batches without sample indices; set `return_index: true` on the datamodule "
                "(DigitsDataModule(return_index=True))."
            )
        if target is None or target.ndim != 1 or bool((target < 0).any()):
            raise ValueError(
                "PS-KD's targets mix each sample's label with its previous prediction, so every training sample needs "
                "a class label but the batch has unlabelled samples (no labels, or -100); use an EMATeacher or "
                "SnapshotTeacher on a transfer set without labels."
            )
        if index.is_floating_point() or index.shape != target.shape:
            raise ValueError(
                f"expected integer sample indices of shape {tuple(target.shape)} as the batch's third item but got a "
                f"{index.dtype} tensor of shape {tuple(index.shape)}."
            )
        return index, target

    def outputs(self, batch: Batch) -> Outputs:
        index, target = self._checked_inputs(batch)
        return {LOGITS: self.previous_log_probs(index, target)}

    def previous_log_probs(self, index: Tensor, target: Tensor) -> Tensor:
        """``log p_{t-1}`` ``[B, C]`` of the samples ``index``; the one-hot label where none is stored yet."""
        index_cpu, target_cpu = index.long().cpu(), target.long().cpu()
        one_hot = torch.full((len(target_cpu), self.num_classes), LOG_ZERO).scatter_(1, target_cpu[:, None], 0.0)
        size = len(self.seen)
        if size > 0:
            row = index_cpu.clamp(max=size - 1)
            known = (index_cpu < size) & self.seen[row]
            one_hot = torch.where(known[:, None], self.log_probs[row], one_hot)
        return one_hot.to(target.device)

    def targets(self, batch: Batch, epoch: int, max_epochs: int | None) -> Tensor:
        """PS-KD's soft targets ``(1 - a_t) * y + a_t * p_{t-1}(x)`` ``[B, C]`` for this batch."""
        alpha = self.alpha(epoch, max_epochs)
        batch = Batch.parse(batch)
        one_hot = F.one_hot(batch.labels.long(), self.num_classes).float()
        return (1.0 - alpha) * one_hot + alpha * self.outputs(batch)[LOGITS].exp()

    # ----------------------------------------------------------------- recording the student's predictions
    def observe_student(self, batch: Batch, student: Mapping[str, Tensor]) -> None:
        """Keep this training batch's log-probabilities until the step is known to be taken."""
        if batch.index is not None:
            self._pending = (batch.index, F.log_softmax(student[LOGITS].detach().float(), dim=-1))

    def after_training_step(self, module: Any, taken: Any) -> None:
        """Store the batch's predictions for the next epoch (a non-finite step's are dropped); under DDP they wait for
        the epoch's end, where one all-gather collects every process's. The predictions live on the CPU, as in the
        official code, so this step reads its finiteness on the host (PS-KD's one host read per step)."""
        pending, self._pending = self._pending, None
        if pending is None or not bool(taken):
            return
        if module.trainer.world_size > 1:
            self._epoch_predictions.append(pending)
        else:
            self.record(*pending)

    def on_train_epoch_end(self, module: Any) -> None:
        if not self._epoch_predictions:
            return
        index, log_probs = (torch.cat(parts) for parts in zip(*self._epoch_predictions, strict=True))
        self._epoch_predictions = []
        index, log_probs = (t.flatten(0, 1) for t in module.all_gather((index, log_probs)))
        self.record(index, log_probs)

    def record(self, index: Tensor, log_probs: Tensor) -> None:
        """Store the student's log-probabilities ``[B, C]`` of the samples ``index`` ``[B]``."""
        index, log_probs = index.long().cpu(), log_probs.detach().float().cpu()
        size, needed = len(self.seen), int(index.max()) + 1
        if needed > size:
            grown = torch.zeros(needed, log_probs.shape[1])
            seen = torch.zeros(needed, dtype=torch.bool)
            if size > 0:
                grown[:size], seen[:size] = self.log_probs, self.seen
            self.log_probs, self.seen = grown, seen
        self.log_probs[index] = log_probs
        self.seen[index] = True

    def eval_logits(self, batch: Batch) -> Tensor | None:
        """PS-KD predicts nothing for unseen inputs: no teacher metrics."""
        return None

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"log_probs": self.log_probs, "seen": self.seen}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.log_probs = state["log_probs"].detach().float().cpu().clone()
        self.seen = state["seen"].detach().bool().cpu().clone()

    def extra_repr(self) -> str:
        return f"alpha_max={self.alpha_max}, epochs={self.epochs}, stored={int(self.seen.sum())}"


__all__ = ["LOG_ZERO", "EMATeacher", "PSKDTeacher", "SnapshotTeacher", "StudentCopy"]
