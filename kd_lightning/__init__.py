"""kd_lightning: knowledge distillation as PyTorch Lightning modules."""

from kd_lightning.callbacks import DistillationReport, ExportWeights
from kd_lightning.data import DigitsDataModule
from kd_lightning.features import FeatureTap
from kd_lightning.models import DigitsCNN, DigitsMLP, TinyCNN
from kd_lightning.modules import Classifier, DistillationModule, OfflineDistillation
from kd_lightning.objective import DistillTerm, Objective
from kd_lightning.teacher import freeze, load_weights

__version__ = "0.1.0"

__all__ = [
    "Classifier",
    "DigitsCNN",
    "DigitsDataModule",
    "DigitsMLP",
    "DistillTerm",
    "DistillationModule",
    "DistillationReport",
    "ExportWeights",
    "FeatureTap",
    "Objective",
    "OfflineDistillation",
    "TinyCNN",
    "freeze",
    "load_weights",
]
