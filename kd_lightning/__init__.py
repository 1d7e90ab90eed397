"""kd_lightning: knowledge distillation as PyTorch Lightning modules."""

from kd_lightning.callbacks import DistillationReport, ExportWeights
from kd_lightning.data import DigitsDataModule, EpochSampler, ResumableDataLoader
from kd_lightning.features import FeatureTap
from kd_lightning.files import AtomicCheckpointIO, CheckpointFileError, read_checkpoint, read_tensors
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
from kd_lightning.modules.checks import NonFiniteLossError
from kd_lightning.objective import DistillTerm, Objective
from kd_lightning.teacher import freeze, load_weights

__version__ = "0.1.0"

__all__ = [
    "AtomicCheckpointIO",
    "BYOTExits",
    "CheckpointFileError",
    "Classifier",
    "DigitsCNN",
    "DigitsDataModule",
    "DigitsMLP",
    "DistillTerm",
    "DistillationLoss",
    "DistillationModule",
    "DistillationReport",
    "EMATeacher",
    "EpochSampler",
    "ExportWeights",
    "FeatureTap",
    "NonFiniteLossError",
    "Objective",
    "OfflineDistillation",
    "OnlineDistillation",
    "PSKDTeacher",
    "ResumableDataLoader",
    "SelfDistillation",
    "SnapshotTeacher",
    "TinyCNN",
    "freeze",
    "load_weights",
    "read_checkpoint",
    "read_tensors",
]
