"""The LightningModules: one per distillation mode, all on :class:`DistillationModule`."""

from kd_lightning.modules.base import DistillationModule
from kd_lightning.modules.classifier import Classifier
from kd_lightning.modules.exits import BYOTExits
from kd_lightning.modules.offline import OfflineDistillation
from kd_lightning.modules.online import OnlineDistillation
from kd_lightning.modules.self_distillation import SelfDistillation
from kd_lightning.teachers.temporal import EMATeacher, PSKDTeacher, SnapshotTeacher, TemporalTeacher

__all__ = [
    "BYOTExits",
    "Classifier",
    "DistillationModule",
    "EMATeacher",
    "OfflineDistillation",
    "OnlineDistillation",
    "PSKDTeacher",
    "SelfDistillation",
    "SnapshotTeacher",
    "TemporalTeacher",
]
