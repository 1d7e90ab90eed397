"""``SyntheticImageDataModule``: seeded random images of any shape and class count (tests, smoke runs, benchmarks).

Every image is generated when it is read, from ``(seed, split, index)`` alone: a split of a million images costs no
memory, and every process (workers, DDP ranks, a resumed run) sees the same data. With ``learnable=True`` an image is
its class's fixed random pattern plus noise, so a network can learn the labels and accuracy means something.

From YAML::

    data:
      class_path: kd_lightning.SyntheticImageDataModule
      init_args: {num_classes: 100, image_size: 32, train_size: 512, batch_size: 64}
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kd_lightning.data.base import ReplayableDataset, SplitDataModule
from kd_lightning.data.resumable import derive_seed

SPLIT_KEYS = {"train": 0, "val": 1, "test": 2}
"""Second key of every image's seed: the splits never share an image."""
_PATTERN_KEY = 0xC1A55
"""Key of the class patterns' seeds, distinct from the split keys."""


class SyntheticImageDataset(ReplayableDataset):
    """``size`` images ``[C, H, W]`` with labels ``index % num_classes`` (balanced), generated on access.

    Image ``index`` is standard normal noise from ``derive_seed(seed, split_key, index)``; with ``learnable`` it is
    ``(pattern[label] + noise) / sqrt(2)``, where ``pattern[label]`` is a standard normal image drawn from the class
    alone, so every pixel has mean 0 and variance 1 over the data. There is no augmentation: every epoch is the same.

    Args:
        size: number of images.
        shape: ``(C, H, W)``.
        num_classes: number of classes.
        split_key: distinguishes the splits (train 0, val 1, test 2).
        data_seed: seed of the images and patterns.
        learnable: images depend on their label.
        return_index: items carry the sample's index as a third element.

    Example:
        >>> data = SyntheticImageDataset(4, (3, 2, 2), num_classes=2)
        >>> image, label = data[3]
        >>> tuple(image.shape), int(label), data[3][0].equal(image)
        ((3, 2, 2), 1, True)
    """

    def __init__(
        self,
        size: int,
        shape: tuple[int, int, int],
        num_classes: int,
        split_key: int = 0,
        data_seed: int = 0,
        learnable: bool = True,
        return_index: bool = False,
    ) -> None:
        super().__init__(augment=False, return_index=return_index)
        self.size, self.shape, self.num_classes = size, tuple(shape), num_classes
        self.split_key, self.data_seed, self.learnable = split_key, data_seed, learnable

    def __len__(self) -> int:
        return self.size

    @property
    def labels(self) -> Tensor:
        """The label of every sample ``[N]`` (``index % num_classes``): what a loss with per-class state reads."""
        return torch.arange(self.size) % self.num_classes

    def pattern(self, label: int) -> Tensor:
        """The class's mean image ``[C, H, W]`` (standard normal, fixed by ``data_seed`` and the label)."""
        generator = torch.Generator().manual_seed(derive_seed(self.data_seed, _PATTERN_KEY, label))
        return torch.randn(self.shape, generator=generator)

    def view(self, index: int, epoch: int) -> tuple[Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} is out of range for a synthetic split of {self.size} images.")
        label = index % self.num_classes
        generator = torch.Generator().manual_seed(derive_seed(self.data_seed, self.split_key, index))
        image = torch.randn(self.shape, generator=generator)
        if self.learnable:
            image = (image + self.pattern(label)) / math.sqrt(2)
        return image, label


class SyntheticImageDataModule(SplitDataModule):
    """Seeded random images for tests, smoke runs and speed benchmarks: no files, any shape, any class count.

    Labels are balanced (``index % num_classes``); with ``learnable`` each image is its class's random pattern plus
    as much noise (so a network can reach high accuracy), else pure noise (chance accuracy). Images are already
    standardised: ``mean`` is 0 and ``std`` 1 per channel. ``predict`` iterates the test split.

    From YAML: ``data: {class_path: kd_lightning.SyntheticImageDataModule, init_args: {num_classes: 10}}``.

    Args:
        num_classes: number of classes.
        image_size: side of the square images, or ``(H, W)``.
        channels: image channels.
        train_size: training images.
        val_size: validation images.
        test_size: test (and predict) images.
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        seed: seed of the images (not of the training order).
        return_index: batches are ``(x, y, index)``, the sample's position in its split.
        learnable: images depend on their label (a class pattern plus noise).
        shuffle_seed: seed of the training order; ``None`` uses the run's seed (``seed_everything``, 0 when unset).
    """

    def __init__(
        self,
        num_classes: int = 100,
        image_size: int | tuple[int, int] = 32,
        channels: int = 3,
        train_size: int = 512,
        val_size: int = 128,
        test_size: int = 128,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        return_index: bool = False,
        learnable: bool = True,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        counts = {"num_classes": num_classes, "channels": channels, "train_size": train_size}
        counts.update(height=size[0], width=size[1], val_size=val_size, test_size=test_size)
        for name, value in counts.items():
            minimum = 0 if name in ("val_size", "test_size") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"expected {name} to be an integer >= {minimum} but got {name}={value!r}.")
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.input_shape = (channels, *size)
        self.mean, self.std = (0.0,) * channels, (1.0,) * channels

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        sizes = {"train": hp.train_size, "val": hp.val_size, "test": hp.test_size}
        for name, size in sizes.items():
            self.splits[name] = SyntheticImageDataset(
                size,
                self.input_shape,
                hp.num_classes,
                split_key=SPLIT_KEYS[name],
                data_seed=hp.seed,
                learnable=hp.learnable,
                return_index=hp.return_index,
            )
