"""LightningDataModules."""

from kd_lightning.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
