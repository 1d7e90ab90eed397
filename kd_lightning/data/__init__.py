"""LightningDataModules (images and text), and the resumable training loaders they share with user datamodules; they
know no method.

May import: ``kd_lightning.losses``, ``core``, ``files``, ``models``.
"""

from kd_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from kd_lightning.data.corpus import python_help_corpus, train_bpe_tokenizer
from kd_lightning.data.digits import DigitsDataModule
from kd_lightning.data.image_folder import ImageFolderDataModule
from kd_lightning.data.resumable import EpochSampler, ResumableDataLoader
from kd_lightning.data.synthetic import SyntheticImageDataModule
from kd_lightning.data.text import TextDataModule
from kd_lightning.data.token_window import TokenWindowLoader

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "EpochSampler",
    "ImageFolderDataModule",
    "ResumableDataLoader",
    "SyntheticImageDataModule",
    "TextDataModule",
    "TokenWindowLoader",
    "python_help_corpus",
    "train_bpe_tokenizer",
]
