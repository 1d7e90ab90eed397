"""``SelfDistillation``: one entry point for both self-distillation modes, kept for configs and checkpoints that name
it. It builds a :class:`~kd_lightning.modules.LayerwiseSelfDistillation` (``exits``) or a
:class:`~kd_lightning.modules.TemporalSelfDistillation` (``teacher``); new code names the mode directly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from kd_lightning.core.objective import DistillTerm
from kd_lightning.modules.base import DistillationModule
from kd_lightning.modules.exits import BYOTExits
from kd_lightning.modules.self_layerwise import LayerwiseSelfDistillation
from kd_lightning.modules.self_temporal import TemporalSelfDistillation
from kd_lightning.teachers import TeacherSource


class SelfDistillation(DistillationModule):
    """Self-distillation: no separate teacher network, the student teaches itself. Give ``exits`` or ``teacher``.

    Calling ``SelfDistillation(...)`` returns a :class:`LayerwiseSelfDistillation` (with ``exits``: BYOT) or a
    :class:`TemporalSelfDistillation` (with ``teacher``: ``EMATeacher``, ``SnapshotTeacher``, ``PSKDTeacher``); their
    checkpoints load through this class too.

    Args:
        student: the network to train and deploy.
        exits: layer-wise self-distillation.
        teacher: temporal self-distillation.
        terms: distillation terms (see the mode).
        ce_weight: weight of the student's cross-entropy (see the mode).
        **kwargs: the shared settings of every mode: see :class:`~kd_lightning.modules.DistillationModule`.
    """

    checkpoint_aliases = (
        "kd_lightning.modules.self_layerwise.LayerwiseSelfDistillation",
        "kd_lightning.modules.self_temporal.TemporalSelfDistillation",
    )
    """The modes this entry point builds: their checkpoints load through it too."""

    def __new__(
        cls,
        student: nn.Module,
        exits: BYOTExits | None = None,
        teacher: TeacherSource | None = None,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float | None = None,
        **kwargs: Any,
    ) -> DistillationModule:
        if (exits is None) == (teacher is None):
            raise ValueError(
                "SelfDistillation needs exactly one of exits=BYOTExits(...) (layer-wise) or teacher=EMATeacher / "
                f"SnapshotTeacher / PSKDTeacher(...) (temporal) but got {'both' if exits is not None else 'neither'}; "
                "name the mode directly: LayerwiseSelfDistillation or TemporalSelfDistillation."
            )
        if exits is not None:
            return LayerwiseSelfDistillation(student, exits, terms=terms, ce_weight=ce_weight, **kwargs)
        return TemporalSelfDistillation(student, teacher, terms=terms, ce_weight=ce_weight, **kwargs)

    def __init__(
        self,
        student: nn.Module,
        exits: BYOTExits | None = None,
        teacher: TeacherSource | None = None,
        terms: Sequence[DistillTerm] | None = None,
        ce_weight: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Never runs: ``__new__`` returns an instance of one of the modes (this signature is what configs see)."""
        super().__init__(student=student, terms=terms, ce_weight=ce_weight, **kwargs)  # pragma: no cover
