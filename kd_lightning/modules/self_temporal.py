"""``TemporalSelfDistillation``: an earlier version of the student teaches the current one.

The teacher is a temporal source (:mod:`kd_lightning.teachers.temporal`): an exponential moving average of the
student (``EMATeacher``), a snapshot refreshed every N epochs (``SnapshotTeacher``, born-again generations), or the
student's own predictions of the previous epoch (``PSKDTeacher``). Everything else is the base module's one path;
this mode differs from :class:`~kd_lightning.modules.OfflineDistillation` only in the sources it accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from kd_lightning.core.networks import require_network
from kd_lightning.core.objective import DistillTerm
from kd_lightning.modules.base import DistillationModule
from kd_lightning.teachers import TEMPORAL, TeacherSource


class TemporalSelfDistillation(DistillationModule):
    """Self-distillation over time: the student learns from a temporal teacher source.

    Loss = ``s_ce(t) * ce_weight * CE(student, y) + s_terms(t) * sum_i weight_i * loss_i(student, teacher)``, with the
    scales ``s`` of the source (PS-KD's ``1 - a_t`` and ``a_t``; 1 otherwise). Before a snapshot exists the student
    learns from the labels alone, with cross-entropy weight 1.

    Args:
        student: the network to train and deploy.
        teacher: the temporal source (``EMATeacher``, ``SnapshotTeacher``, ``PSKDTeacher``).
        terms: distillation terms. ``None``: the source's default — Hinton KD ``0.9 * KD(T=4)`` (EMA, snapshot),
            PS-KD's ``KD(T=1)`` (PS-KD).
        ce_weight: weight of the student's cross-entropy. ``None``: 0.1 with the default Hinton term, 1.0 otherwise.
        **kwargs: the shared settings of every mode (``num_classes``, ``optimizer``, ``lr_scheduler``,
            ``label_smoothing``, ``on_nonfinite``, ``compile``, ``channels_last``): see
            :class:`~kd_lightning.modules.DistillationModule`.

    Example:
        >>> import torch
        >>> from kd_lightning.models import DigitsCNN
        >>> from kd_lightning.teachers import EMATeacher
        >>> ema = TemporalSelfDistillation(DigitsCNN(width=4), teacher=EMATeacher(decay=0.99))
        >>> ema(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    checkpoint_aliases = ("kd_lightning.modules.self_distillation.SelfDistillation",)
    """Checkpoints of the earlier ``SelfDistillation`` with a temporal teacher load here."""

    def __init__(
        self,
        student: nn.Module,
        teacher: TeacherSource,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float | None = None,
        **kwargs: Any,
    ) -> None:
        require_network(student, "student")
        check_temporal(teacher)
        if terms is not None and ce_weight is None:
            ce_weight = 1.0
        super().__init__(student=student, terms=terms, ce_weight=ce_weight, teacher=teacher, **kwargs)
        self.save_init_arguments()


def check_temporal(teacher: Any) -> None:
    """Raise unless ``teacher`` is a temporal source, naming the mode for what was given."""
    if isinstance(teacher, TeacherSource) and teacher.kind == TEMPORAL:
        return
    if isinstance(teacher, nn.Module):
        raise TypeError(
            f"expected teacher to be a temporal teacher source (EMATeacher, SnapshotTeacher, PSKDTeacher) but got "
            f"{type(teacher).__name__}; for a separate trained teacher use OfflineDistillation."
        )
    raise TypeError(
        f"expected teacher to be a temporal teacher source (EMATeacher, SnapshotTeacher, PSKDTeacher) but got "
        f"{type(teacher).__name__}. In YAML: teacher: {{class_path: kd_lightning.EMATeacher, init_args: "
        f"{{decay: 0.99}}}}."
    )
