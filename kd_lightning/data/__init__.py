"""LightningDataModules, and the resumable training loader they share with user datamodules."""

from kd_lightning.data.digits import DigitsDataModule
from kd_lightning.data.resumable import EpochSampler, ResumableDataLoader

__all__ = ["DigitsDataModule", "EpochSampler", "ResumableDataLoader"]
