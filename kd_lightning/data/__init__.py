"""LightningDataModules, and the resumable training loader they share with user datamodules."""

from kd_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from kd_lightning.data.digits import DigitsDataModule
from kd_lightning.data.image_folder import ImageFolderDataModule
from kd_lightning.data.resumable import EpochSampler, ResumableDataLoader
from kd_lightning.data.synthetic import SyntheticImageDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "EpochSampler",
    "ImageFolderDataModule",
    "ResumableDataLoader",
    "SyntheticImageDataModule",
]
