"""kd_lightning: knowledge distillation as PyTorch Lightning modules.

The package's folders, each importing only those before it: ``losses`` (what is taught), ``core`` (the batch, the
targets, feature taps, the objective), ``files`` (disk), ``models``, ``data``, ``teachers`` (who teaches), ``modules``
(the LightningModules, one per mode), ``export``, ``callbacks``, ``cli`` (the commands; nothing imports it). This
file only re-exports the public API.
"""

from kd_lightning.core import moved

moved.install()  # old import paths (checkpoints, configs) resolve to where the code lives now

# ruff: noqa: E402
from kd_lightning.callbacks import (
    CompactModelSummary,
    ConvertQuantized,
    DistillationReport,
    ExportStudent,
    ExportWeights,
    measure_network,
)
from kd_lightning.core.batch import Batch
from kd_lightning.core.networks import freeze
from kd_lightning.core.objective import DistillTerm, Objective
from kd_lightning.core.taps import FeatureTap
from kd_lightning.core.tokens import Targets, TokenTargets
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
    Deployable,
    DistillationModule,
    LayerwiseSelfDistillation,
    OfflineDistillation,
    OnlineDistillation,
    OnPolicy,
    SelfDistillation,
    TemporalSelfDistillation,
)
from kd_lightning.modules._nonfinite import NonFiniteLossError
from kd_lightning.teachers import (
    CachedTeacher,
    EMATeacher,
    FrozenTeacher,
    PSKDTeacher,
    Renormalize,
    SnapshotTeacher,
    TeacherCache,
    TeacherCacheError,
    TeacherEnsemble,
    TeacherSource,
    TokenStoreError,
    TokenStoreTeacher,
    label_corpus,
)

__version__ = "0.2.0"

__all__ = [
    "AtomicCheckpointIO",
    "BYOTExits",
    "Batch",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CachedTeacher",
    "CheckpointFileError",
    "Classifier",
    "CompactModelSummary",
    "ConvertQuantized",
    "Deployable",
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
    "FrozenTeacher",
    "ImageFolderDataModule",
    "LayerwiseSelfDistillation",
    "NonFiniteLossError",
    "Objective",
    "OfflineDistillation",
    "OnPolicy",
    "OnlineDistillation",
    "PSKDTeacher",
    "Renormalize",
    "ResumableDataLoader",
    "SelfDistillation",
    "SnapshotTeacher",
    "SyntheticImageDataModule",
    "Targets",
    "TeacherCache",
    "TeacherCacheError",
    "TeacherEnsemble",
    "TeacherSource",
    "TemporalSelfDistillation",
    "TextDataModule",
    "TinyCNN",
    "TokenLoss",
    "TokenStoreError",
    "TokenStoreTeacher",
    "TokenTargets",
    "TokenWindowLoader",
    "freeze",
    "label_corpus",
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
