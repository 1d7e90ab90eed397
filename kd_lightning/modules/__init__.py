"""The LightningModules: one per distillation mode, all on :class:`DistillationModule`."""

from kd_lightning.modules.base import DistillationModule
from kd_lightning.modules.classifier import Classifier
from kd_lightning.modules.offline import OfflineDistillation

__all__ = ["Classifier", "DistillationModule", "OfflineDistillation"]
