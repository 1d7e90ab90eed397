"""kd_lightning: knowledge distillation as PyTorch Lightning modules."""

from kd_lightning.callbacks import DistillationReport, ExportWeights
from kd_lightning.data import DigitsDataModule
from kd_lightning.features import FeatureTap
from kd_lightning.losses import DistillationLoss
from kd_lightning.models import DigitsCNN, DigitsMLP, TinyCNN
from kd_lightning.modules import (
    BYOTExits,
    Classifier,
    DistillationModule,
    EMATeacher,
    OfflineDistillation,
    OnlineDistillation,
    PSKDTeacher,
    SelfDistillation,
    SnapshotTeacher,
)
from kd_lightning.objective import DistillTerm, Objective
from kd_lightning.teacher import freeze, load_weights

__version__ = "0.1.0"

__all__ = [
    "BYOTExits",
    "Classifier",
    "DigitsCNN",
    "DigitsDataModule",
    "DigitsMLP",
    "DistillTerm",
    "DistillationLoss",
    "DistillationModule",
    "DistillationReport",
    "EMATeacher",
    "ExportWeights",
    "FeatureTap",
    "Objective",
    "OfflineDistillation",
    "OnlineDistillation",
    "PSKDTeacher",
    "SelfDistillation",
    "SnapshotTeacher",
    "TinyCNN",
    "freeze",
    "load_weights",
]
