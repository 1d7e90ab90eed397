"""kd_lightning: knowledge distillation as PyTorch Lightning modules."""

from kd_lightning.core import moved

moved.install()  # old import paths (checkpoints, configs) resolve to where the code lives now

# ruff: noqa: E402
from kd_lightning.callbacks import ConvertQuantized, DistillationReport, ExportStudent, ExportWeights, measure_network
from kd_lightning.core.networks import freeze
from kd_lightning.core.objective import DistillTerm, Objective
from kd_lightning.core.taps import FeatureTap
from kd_lightning.core.tokens import TokenTargets
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
from kd_lightning.files import AtomicCheckpointIO, CheckpointFileError, read_checkpoint, read_tensors
from kd_lightning.files.weights import load_weights
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
from kd_lightning.modules._guards import NonFiniteLossError
from kd_lightning.teachers.cache_store import TeacherCache, TeacherCacheError
from kd_lightning.teachers.normalization import Renormalize

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
