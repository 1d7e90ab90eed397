"""kd_lightning: knowledge distillation as PyTorch Lightning modules."""

from kd_lightning.cache import TeacherCache, TeacherCacheError
from kd_lightning.callbacks import ConvertQuantized, DistillationReport, ExportStudent, ExportWeights, measure_network
from kd_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    EpochSampler,
    ImageFolderDataModule,
    ResumableDataLoader,
    SyntheticImageDataModule,
    TextDataModule,
    TokenWindowLoader,
)
from kd_lightning.features import FeatureTap
from kd_lightning.files import AtomicCheckpointIO, CheckpointFileError, read_checkpoint, read_tensors
from kd_lightning.losses import DistillationLoss, TokenLoss
from kd_lightning.models import (
    DigitsCNN,
    DigitsMLP,
    TinyCNN,
    quantized_copy,
    shallow_copy,
    student_from_teacher,
    timm_model,
    torchvision_model,
)
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
from kd_lightning.normalization import Renormalize
from kd_lightning.objective import DistillTerm, Objective
from kd_lightning.teacher import freeze, load_weights
from kd_lightning.tokens import TokenTargets

__version__ = "0.1.0"

__all__ = [
    "AtomicCheckpointIO",
    "BYOTExits",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CheckpointFileError",
    "Classifier",
    "ConvertQuantized",
    "DigitsCNN",
    "DigitsDataModule",
    "DigitsMLP",
    "DistillTerm",
    "DistillationLoss",
    "DistillationModule",
    "DistillationReport",
    "EMATeacher",
    "EpochSampler",
    "ExportStudent",
    "ExportWeights",
    "FeatureTap",
    "ImageFolderDataModule",
    "NonFiniteLossError",
    "Objective",
    "OfflineDistillation",
    "OnlineDistillation",
    "PSKDTeacher",
    "Renormalize",
    "ResumableDataLoader",
    "SelfDistillation",
    "SnapshotTeacher",
    "SyntheticImageDataModule",
    "TeacherCache",
    "TeacherCacheError",
    "TextDataModule",
    "TinyCNN",
    "TokenLoss",
    "TokenTargets",
    "TokenWindowLoader",
    "freeze",
    "load_weights",
    "measure_network",
    "quantized_copy",
    "read_checkpoint",
    "read_tensors",
    "shallow_copy",
    "student_from_teacher",
    "timm_model",
    "torchvision_model",
]
