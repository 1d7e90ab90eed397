"""Temporal teachers for self-distillation: an earlier version of the student teaches the current one.

* :class:`EMATeacher` — an exponential moving average of the student's weights, updated after every optimizer step.
* :class:`SnapshotTeacher` — a copy of the student refreshed every N epochs (born-again generations).
* :class:`PSKDTeacher` — PS-KD's progressive targets: each sample's prediction from the previous epoch.

A teacher is configured on its own (``class_path`` in YAML) and bound to the student by
:class:`~kd_lightning.modules.self_distillation.SelfDistillation`, which calls :meth:`TemporalTeacher.attach` (with the
bare student, before any feature tap is put on it), :meth:`TemporalTeacher.watch` and the update hooks. Copies hold
the student network only (no forward hooks, so no feature taps and no teacher of a teacher) and are frozen (no
gradients, eval mode, never in the optimizer). The whole state — EMA weights, snapshot weights and generation, PS-KD's
per-sample predictions — is part of ``state_dict()``, so checkpoints resume exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.core import batch as batches
from kd_lightning.core.batch import Batch, Inputs
from kd_lightning.core.networks import freeze, hookless_copy
from kd_lightning.core.objective import DistillTerm
from kd_lightning.core.taps import LOGITS, FeatureTap
from kd_lightning.losses import KDLoss

LOG_ZERO = -1e4
"""Log-probability standing for probability 0 in one-hot targets (finite, so KL terms stay finite)."""


class TemporalTeacher(nn.Module):
    """Base of the temporal teachers: what :class:`SelfDistillation` asks of an earlier version of the student.

    Subclasses override the hooks they need; the defaults describe a teacher that always teaches with weight 1.
    """

    records_predictions = False
    """Whether :meth:`record` wants the student's log-probabilities after every training batch (PS-KD)."""

    def attach(self, student: nn.Module) -> None:
        """Bind to ``student``: called once, before any feature tap is put on it."""

    def watch(self, layers: Sequence[str], num_classes: int) -> None:
        """Prepare to answer with ``layers`` (the outputs the terms read) over ``num_classes`` classes."""

    def default_terms(self) -> tuple[list[DistillTerm], float]:
        """Terms and cross-entropy weight used when none are given: Hinton KD, ``0.1 * CE + 0.9 * KD(T=4)``."""
        return [DistillTerm(KDLoss(temperature=4.0), weight=0.9)], 0.1

    @property
    def is_teaching(self) -> bool:
        """False while there is nothing to learn from yet (before the first snapshot): train on the labels alone."""
        return True

    def outputs(self, batch: Batch) -> dict[str, Tensor]:
        """Teacher outputs for a training batch: ``{"logits": [B, C], "<layer>": feature, ...}`` (no gradient)."""
        raise NotImplementedError

    def eval_logits(self, inputs: Inputs) -> Tensor | None:
        """Teacher logits for validation metrics, or ``None`` when the teacher cannot predict unseen inputs."""
        return None

    def loss_scales(self, epoch: int, max_epochs: int | None) -> tuple[float, float]:
        """Multipliers of the cross-entropy and of the distillation terms in this (0-based) epoch."""
        return 1.0, 1.0

    def after_optimizer_step(self, student: nn.Module) -> None:
        """Called after every optimizer step (not after accumulation-only batches)."""

    def after_epoch(self, student: nn.Module, epoch: int) -> None:
        """Called at the end of every training epoch (0-based ``epoch``)."""

    def record(self, index: Tensor, log_probs: Tensor) -> None:
        """Store the student's log-probabilities ``[B, C]`` of the samples ``index`` ``[B]`` (PS-KD)."""


class _FrozenStudentCopy(TemporalTeacher):
    """A frozen copy of the student (``self.network``) that answers through its own feature tap."""

    def __init__(self) -> None:
        super().__init__()
        self.network: nn.Module | None = None
        self._tap: FeatureTap | None = None

    def attach(self, student: nn.Module) -> None:
        self.network = freeze(hookless_copy(student))

    def watch(self, layers: Sequence[str], num_classes: int) -> None:
        self._tap = FeatureTap(self.network, layers, role="teacher (copy of the student)")

    def outputs(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():
            return batches.call(self._tap, batches.inputs_of(batch))

    def eval_logits(self, inputs: Inputs) -> Tensor | None:
        if not self.is_teaching:
            return None
        return self.outputs(inputs if isinstance(inputs, Mapping) else [inputs])[LOGITS]

    def train(self, mode: bool = True) -> _FrozenStudentCopy:
        """The copy stays in eval mode whatever ``mode`` (BatchNorm uses its stored statistics, no dropout)."""
        super().train(mode)
        if self.network is not None:
            self.network.eval()
        return self


class EMATeacher(_FrozenStudentCopy):
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
    def after_optimizer_step(self, student: nn.Module) -> None:
        average = [*self.network.parameters(), *self.network.buffers()]  # the copy's order is the student's
        live = [*student.parameters(), *student.buffers()]
        floating = [index for index, tensor in enumerate(average) if tensor.is_floating_point()]
        torch._foreach_lerp_([average[i] for i in floating], [live[i] for i in floating], 1.0 - self.decay)
        for index in set(range(len(average))) - set(floating):
            average[index].copy_(live[index])

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


class SnapshotTeacher(_FrozenStudentCopy):
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
    def after_epoch(self, student: nn.Module, epoch: int) -> None:
        if (epoch + 1) % self.every_n_epochs == 0:
            self.network.load_state_dict(student.state_dict())
            self.generation += 1

    def get_extra_state(self) -> dict[str, Any]:
        return {"generation": self.generation}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])

    def extra_repr(self) -> str:
        return f"every_n_epochs={self.every_n_epochs}, generation={self.generation}"


class PSKDTeacher(TemporalTeacher):
    """PS-KD: the targets are the labels softened by the student's own predictions from the previous epoch.

    Kim et al., ICCV 2021, "Self-Knowledge Distillation with Progressive Refinement of Targets". With ``y`` the one-hot
    label ``[B, C]`` and ``p_{t-1}(x)`` the softmax prediction the student made for sample ``x`` in the previous epoch,
    the target of epoch ``t`` (0-based, ``E`` epochs) is ``(1 - a_t) * y + a_t * p_{t-1}(x)`` with
    ``a_t = alpha_max * (t + 1) / E`` (the official code's schedule); a sample without a stored prediction (epoch 0)
    uses ``p = y``. The predictions are kept per sample index, so batches must be ``(x, y, index)``.

    Through :class:`SelfDistillation` the teacher "logits" are ``log p_{t-1}`` ``[B, C]``, the cross-entropy is
    scaled by ``1 - a_t`` and every term by ``a_t``. With the default term, ``KD`` at ``T = 1`` with weight 1, the loss
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

    records_predictions = True

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

    def watch(self, layers: Sequence[str], num_classes: int) -> None:
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

    def outputs(self, batch: Batch) -> dict[str, Tensor]:
        index, target = batches.index_of(batch), batches.labels_of(batch)
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
        one_hot = F.one_hot(batches.labels_of(batch).long(), self.num_classes).float()
        return (1.0 - alpha) * one_hot + alpha * self.outputs(batch)[LOGITS].exp()

    def record(self, index: Tensor, log_probs: Tensor) -> None:
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

    def get_extra_state(self) -> dict[str, Tensor]:
        return {"log_probs": self.log_probs, "seen": self.seen}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        self.log_probs = state["log_probs"].detach().float().cpu().clone()
        self.seen = state["seen"].detach().bool().cpu().clone()

    def extra_repr(self) -> str:
        return f"alpha_max={self.alpha_max}, epochs={self.epochs}, stored={int(self.seen.sum())}"
