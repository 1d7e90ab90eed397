"""``ImageFolderDataModule``: ImageNet-style folders of images, with timm's training and evaluation transforms.

Layout (torchvision's ``ImageFolder``, one folder per class, the same classes in both splits)::

    data/imagenet/train/n01440764/*.JPEG
    data/imagenet/train/n01443537/*.JPEG
    ...
    data/imagenet/val/n01440764/*.JPEG
    ...

From YAML::

    data:
      class_path: kd_lightning.ImageFolderDataModule
      init_args: {root: data/imagenet, input_size: 224, batch_size: 128, num_workers: 8}

timm's transforms draw from the global RNGs (torch, ``random``, NumPy). The training dataset seeds all three from
``derive_seed(seed, epoch, index)`` around each sample and restores them afterwards, so every augmented view is
replayable (:meth:`ImageFolderDataset.sample`), the same with any number of workers and in a resumed run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch import Tensor
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from kd_lightning.data.base import ReplayableDataset, SplitDataModule, seeded_global_rng
from kd_lightning.data.resumable import derive_seed


def _layout(root: Path) -> str:
    """The expected layout, spelled with the actual root."""
    return f"expected layout: {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg, the same class folders in both"


def _has_image(folder: Path) -> bool:
    for _, _, files in os.walk(folder, followlinks=True):
        if any(name.lower().endswith(IMG_EXTENSIONS) for name in files):
            return True
    return False


def _class_folders(split: Path) -> list[str]:
    """The sorted class folder names of one split, each checked to hold at least one image."""
    if not split.is_dir():
        raise FileNotFoundError(
            f"expected the folder {split} but it does not exist ({_layout(split.parent)}); point `root` at the "
            f"folder that holds train/ and val/."
        )
    classes = sorted(entry.name for entry in os.scandir(split) if entry.is_dir())
    if not classes:
        loose = sum(1 for entry in os.scandir(split) if entry.name.lower().endswith(IMG_EXTENSIONS))
        hint = (
            f"; it holds {loose} image file(s) directly: sort them into one folder per class (ImageNet's validation "
            f"images come unsorted and must be moved into their class folders)"
            if loose
            else ""
        )
        raise ValueError(f"expected class folders in {split} but found none{hint} ({_layout(split.parent)}).")
    for name in classes:
        if not _has_image(split / name):
            raise ValueError(
                f"expected images in the class folder {split / name} but found none (accepted extensions: "
                f"{', '.join(IMG_EXTENSIONS)}); add its images or remove the folder ({_layout(split.parent)})."
            )
    return classes


def check_image_folder(root: str | Path) -> list[str]:
    """The class names of an ImageFolder dataset at ``root``, or an error naming the folder and the expected layout.

    Checks that ``root/train`` and ``root/val`` exist, hold class folders, that every class folder holds at least one
    image, and that both splits have the same classes (else the label indices would not match).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"expected an ImageFolder dataset at root={str(root)!r} but the folder does not exist ({_layout(root)})."
        )
    train, val = _class_folders(root / "train"), _class_folders(root / "val")
    if train != val:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise ValueError(
            f"expected the same class folders in {root / 'train'} and {root / 'val'} but "
            f"{len(only_train)} are only in train/ {only_train[:5]} and {len(only_val)} only in val/ {only_val[:5]}; "
            f"the label of a class is its position among the sorted folder names, so both splits need every class."
        )
    return train


class ImageFolderDataset(ReplayableDataset):
    """A torchvision ``ImageFolder`` whose random transform replays: the global RNGs are seeded per sample.

    With ``augment``, ``transform`` runs inside :func:`~kd_lightning.data.base.seeded_global_rng` with the seed
    ``derive_seed(seed, epoch, index)``; the caller's RNG states are restored afterwards.

    Args:
        folder: the split's ``ImageFolder`` (``transform`` unset: this dataset applies it).
        transform: PIL image to ``[C, H, W]`` float tensor.
        augment: the transform is random (seed it per sample and epoch).
        return_index: items carry the sample's index in the split.
        seed: seed of the augmentation.
    """

    def __init__(
        self,
        folder: ImageFolder,
        transform: Callable[[Any], Tensor],
        augment: bool = False,
        return_index: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(augment=augment, return_index=return_index, seed=seed)
        self.folder, self.transform = folder, transform

    def __len__(self) -> int:
        return len(self.folder)

    @property
    def targets(self) -> list[int]:
        """The class of every image (torchvision's ``ImageFolder.targets``): what a loss with per-class state reads."""
        return list(self.folder.targets)

    def view(self, index: int, epoch: int) -> tuple[Tensor, int]:
        image, label = self.folder[index]
        if not self.augment:
            return self.transform(image), label
        with seeded_global_rng(derive_seed(self.seed, epoch, index)):
            return self.transform(image), label


class ImageFolderDataModule(SplitDataModule):
    """ImageNet-style ``root/train/<class>/*`` and ``root/val/<class>/*`` folders with timm's transforms.

    Training images get ``timm.data.create_transform(input_size, is_training=True, ...)`` (random-resized crop, flip,
    colour jitter, optional AutoAugment/RandAugment), evaluation images the resize + center crop of
    ``is_training=False`` (``crop_pct``). Labels are class indices in the sorted order of the folder names. ``val``
    serves validation, ``test`` and ``predict`` (ImageNet's test labels are not public).

    The folder is checked when the datamodule is built (unless ``num_classes`` is given, then in ``setup``): a
    missing ``train/`` or ``val/``, a split without class folders, a class folder without images, or different
    classes in the two splits is an error that names the folder.

    From YAML: ``data: {class_path: kd_lightning.ImageFolderDataModule, init_args: {root: data/imagenet}}``.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        input_size: side of the (square) network input, or ``(H, W)``.
        batch_size: samples per batch.
        num_workers: dataloader worker processes (decoding JPEGs needs several).
        mean: per-channel normalisation mean (pixels in [0, 1]); ImageNet's by default.
        std: per-channel normalisation standard deviation; ImageNet's by default.
        interpolation: resize interpolation (``bilinear``, ``bicubic``, ``random``).
        crop_pct: evaluation center-crop fraction (``None``: timm's default, 0.875).
        auto_augment: timm auto-augment policy, e.g. ``rand-m9-mstd0.5-inc1`` (``None``: none).
        train_transform_kwargs: further ``create_transform`` arguments for training, e.g. ``{re_prob: 0.25}``.
        augment: random training transform (``False``: training images get the evaluation transform).
        return_index: batches are ``(x, y, index)``, the sample's position in its split.
        num_classes: the number of classes, if known; ``None`` counts the class folders when the datamodule is built
            (which then needs the files). Checked against the folders in ``setup``.
        shuffle_seed: seed of the training order and augmentation; ``None`` uses the run's seed.

    Attributes:
        num_classes: the number of class folders; the CLI links it into the model.
        mean: the normalisation's mean; modules use it to re-normalise teacher inputs.
        std: the normalisation's standard deviation.
        classes: the class folder names, in label order (after ``setup``, or at construction without ``num_classes``).
    """

    def __init__(
        self,
        root: str | Path = "data/imagenet",
        input_size: int | tuple[int, int] = 224,
        batch_size: int = 64,
        num_workers: int = 8,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        interpolation: str = "bilinear",
        crop_pct: float | None = None,
        auto_augment: str | None = None,
        train_transform_kwargs: dict[str, Any] | None = None,
        augment: bool = True,
        return_index: bool = False,
        num_classes: int | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.input_shape = (3, *size)
        self.classes: list[str] | None = None
        if num_classes is None:
            self.classes = check_image_folder(root)
            num_classes = len(self.classes)
        self.num_classes = int(num_classes)

    def transforms(self) -> tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]:
        """The training and evaluation transforms (timm's ``create_transform``)."""
        hp = self.hparams
        common = dict(input_size=self.input_shape, interpolation=hp.interpolation, mean=self.mean, std=self.std)
        train = create_transform(
            is_training=True, auto_augment=hp.auto_augment, **common, **(hp.train_transform_kwargs or {})
        )
        return train, create_transform(is_training=False, crop_pct=hp.crop_pct, **common)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        classes = self.classes or check_image_folder(hp.root)  # checked at construction unless num_classes was given
        if len(classes) != self.num_classes:
            raise ValueError(
                f"expected {self.num_classes} classes (num_classes={self.num_classes}) but {Path(hp.root) / 'train'} "
                f"has {len(classes)} class folders; set num_classes: {len(classes)} or null (counted from the folders)."
            )
        self.classes = classes
        train_transform, eval_transform = self.transforms()
        if not hp.augment:
            train_transform = eval_transform
        root = Path(hp.root)
        self.splits["train"] = ImageFolderDataset(
            ImageFolder(root / "train"), train_transform, augment=hp.augment, return_index=hp.return_index
        )
        self.splits["val"] = ImageFolderDataset(ImageFolder(root / "val"), eval_transform, return_index=hp.return_index)
        self.splits["test"] = self.splits["val"]
