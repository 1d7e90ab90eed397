"""CIFAR-10 and CIFAR-100 with the distillation benchmark's augmentation and normalisation (RepDistiller, mdistiller).

Files: torchvision's layout, the extracted official CIFAR archive under ``root``::

    data/cifar/cifar-100-python/{train,test,meta}                               # CIFAR-100
    data/cifar/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}   # CIFAR-10

From YAML::

    data:
      class_path: kd_lightning.CIFAR100DataModule
      init_args: {root: data/cifar, batch_size: 64}

Training images get the benchmark's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``, implemented here on
tensors with a generator seeded from ``derive_seed(seed, epoch, index)``: teacher and student see the same view, a
resumed run sees the views of the interrupted one, and :meth:`CIFARDataset.sample` replays any of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10, CIFAR100

from kd_lightning.data.base import ReplayableDataset, SplitDataModule, channel_stats, normalize
from kd_lightning.data.resumable import derive_seed

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
"""RepDistiller's and mdistiller's CIFAR-100 normalisation (``dataset/cifar100.py`` in both)."""
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
"""The per-channel mean and standard deviation of CIFAR-10's training pixels."""


def crop_and_flip(image: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """``RandomCrop(size, padding=padding)`` (zero fill) then ``RandomHorizontalFlip(0.5)`` of a ``[C, H, W]`` image.

    The crop offsets and the flip are drawn from ``generator`` (not the global RNG), so a seeded generator replays
    the view.

    Example:
        >>> image = torch.arange(16, dtype=torch.uint8).view(1, 4, 4)
        >>> crop_and_flip(image, padding=0, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([1, 4, 4])
    """
    height, width = image.shape[-2:]
    top, left = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    flip = bool(torch.rand((), generator=generator) < 0.5)
    padded = torch.nn.functional.pad(image, [padding] * 4) if padding else image
    view = padded[..., top : top + height, left : left + width]
    return view.flip(-1) if flip else view


class CIFARDataset(ReplayableDataset):
    """CIFAR images (uint8 ``[N, 3, 32, 32]``) and labels ``[N]``, normalised on access, optionally augmented.

    The crop and flip of sample ``index`` in epoch ``epoch`` come from ``derive_seed(seed, epoch, index)``.

    Args:
        images: uint8 ``[N, 3, H, W]``.
        labels: int64 ``[N]``.
        mean: per-channel mean of the normalisation (pixels scaled to [0, 1]).
        std: per-channel standard deviation.
        augment: random crop (padding 4) and horizontal flip.
        return_index: items carry the sample's index in the split.
        seed: seed of the augmentation.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool = False,
        return_index: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(augment=augment, return_index=return_index, seed=seed)
        self.images, self.labels = images, labels
        self._mean, self._std = channel_stats(mean), channel_stats(std)

    def __len__(self) -> int:
        return len(self.labels)

    def view(self, index: int, epoch: int) -> tuple[Tensor, int]:
        image = self.images[index]
        if self.augment:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
            image = crop_and_flip(image, padding=4, generator=generator)
        return normalize(image, self._mean, self._std), int(self.labels[index])


class CIFAR10DataModule(SplitDataModule):
    """CIFAR-10 (torchvision's files under ``root``): 50,000 training and 10,000 test images of 10 classes.

    Validation is the test set by default (``val_size=0``), as in the distillation benchmarks (RepDistiller,
    mdistiller), whose reported accuracies are test accuracies; choosing checkpoints on it is then optimistic.
    ``val_size=5000`` holds out that many training images instead (class-balanced, seeded by ``split_seed``, not
    augmented), and the test set stays untouched for ``test``. ``predict`` iterates the test set.

    Missing files are an error in ``setup`` (before training) that says where to put them. ``download: true`` fetches
    the official CIFAR archive in ``prepare_data`` (the Trainer calls it on one process per node); an archive already
    in ``root`` with the right checksum is extracted without network access.

    From YAML: ``data: {class_path: kd_lightning.CIFAR10DataModule, init_args: {root: data/cifar, batch_size: 64}}``.

    Args:
        root: folder holding torchvision's ``cifar-10-batches-py`` (or ``cifar-100-python``) folder.
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        download: download the official archive into ``root`` if the files are missing (needs network).
        val_size: training images held out for validation; 0 validates on the test set.
        split_seed: seed of the held-out validation images.
        augment: random crop (padding 4) + horizontal flip of the training images (the benchmark's augmentation).
        return_index: batches are ``(x, y, index)``, the sample's position in its split (for per-sample state such
            as a teacher-output cache or PS-KD).
        shuffle_seed: seed of the training order and augmentation; ``None`` uses the run's seed (``seed_everything``,
            0 when unset), read when the training loader is built.

    Attributes:
        num_classes: 10 (100 for CIFAR-100); the CLI links it into the model.
        mean: the normalisation's per-channel mean (pixels in [0, 1]); modules use it to re-normalise teacher inputs.
        std: the normalisation's per-channel standard deviation.
    """

    dataset_class: type[CIFAR10] = CIFAR10
    """The torchvision dataset that reads (and downloads) the files."""
    dataset_name = "CIFAR-10"
    num_classes = 10
    input_shape = (3, 32, 32)
    mean = CIFAR10_MEAN
    std = CIFAR10_STD

    def __init__(
        self,
        root: str | Path = "data/cifar",
        batch_size: int = 64,
        num_workers: int = 0,
        download: bool = False,
        val_size: int = 0,
        split_seed: int = 0,
        augment: bool = True,
        return_index: bool = False,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 0:
            raise ValueError(
                f"expected val_size to be an integer >= 0 (0: validate on the test set, e.g. 5000: hold out that "
                f"many training images) but got val_size={val_size!r}."
            )
        self.save_hyperparameters()

    @property
    def folder(self) -> Path:
        """Where the extracted files are expected: ``root/cifar-10-batches-py`` or ``root/cifar-100-python``."""
        return Path(self.hparams.root) / self.dataset_class.base_folder

    def file_names(self) -> list[str]:
        """The files torchvision reads from :attr:`folder` (and checks against their md5 checksums)."""
        dataset = self.dataset_class
        return [name for name, _ in dataset.train_list + dataset.test_list] + [dataset.meta["filename"]]

    def missing_files(self) -> list[Path]:
        """The files of :meth:`file_names` that are not there."""
        return [self.folder / name for name in self.file_names() if not (self.folder / name).is_file()]

    def prepare_data(self) -> None:
        """Download and extract the official archive into ``root`` if ``download`` is set and files are missing."""
        if not self.hparams.download or not self.missing_files():
            return
        try:
            self.dataset_class(str(self.hparams.root), train=True, download=True)
        except (OSError, RuntimeError) as error:
            raise RuntimeError(
                f"could not download {self.dataset_name} into {self.hparams.root} ({type(error).__name__}: {error}); "
                f"this machine may have no network access. {self._fix()}"
            ) from error

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.missing_files() and self.hparams.download:
            self.prepare_data()  # outside a Trainer (a Trainer has already called it)
        missing = self.missing_files()
        if missing:
            if not self.folder.is_dir():
                found = f"the folder {self.folder} does not exist"
            else:
                found = f"{', '.join(str(path) for path in missing)} {'is' if len(missing) == 1 else 'are'} missing"
            layout = f"{self.folder}/{{{','.join(self.file_names())}}}"
            raise FileNotFoundError(
                f"{self.dataset_name} was not found: expected torchvision's layout {layout} (the extracted official "
                f"CIFAR archive {self.dataset_class.filename}) but {found}. {self._fix()}"
            )
        train_images, train_labels = self._read(train=True)
        test_images, test_labels = self._read(train=False)
        hp = self.hparams
        if hp.val_size >= len(train_labels):
            raise ValueError(
                f"expected val_size < {len(train_labels)} (the training images) but got val_size={hp.val_size}."
            )
        if hp.val_size:
            val, train = balanced_split(train_labels, hp.val_size, seed=hp.split_seed)
            self.splits["val"] = self._dataset(train_images[val], train_labels[val], augment=False)
            train_images, train_labels = train_images[train], train_labels[train]
        self.splits["train"] = self._dataset(train_images, train_labels, augment=hp.augment)
        self.splits["test"] = self._dataset(test_images, test_labels, augment=False)
        self.splits.setdefault("val", self.splits["test"])

    def _dataset(self, images: Tensor, labels: Tensor, augment: bool) -> CIFARDataset:
        return_index = self.hparams.return_index
        return CIFARDataset(images, labels, self.mean, self.std, augment=augment, return_index=return_index)

    def _read(self, train: bool) -> tuple[Tensor, Tensor]:
        """uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]`` of a split, read and checksummed by torchvision."""
        try:
            dataset = self.dataset_class(str(self.hparams.root), train=train, download=False)
        except RuntimeError as error:
            raise ValueError(
                f"the {self.dataset_name} files in {self.folder} exist but fail torchvision's checksum ({error}): they "
                f"are corrupt, partially copied or of another dataset. Delete {self.folder} and copy the extracted "
                f"official archive again, or set `download: true` on a machine with network access."
            ) from error
        images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
        return images, torch.as_tensor(dataset.targets, dtype=torch.int64)

    def _fix(self) -> str:
        base, archive = self.dataset_class.base_folder, self.dataset_class.filename
        return (
            f"Fix: set `download: true` (data.init_args.download) on a machine with network access, or copy the "
            f"extracted {base} folder into {self.hparams.root}{os.sep} (or put {archive} there and set "
            f"`download: true`: an archive with the right checksum is extracted without network access), or point "
            f"`root` at the folder that holds {base}."
        )


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (torchvision's files under ``root``): 50,000 training and 10,000 test images of 100 classes.

    Everything as in :class:`CIFAR10DataModule`, with the benchmark's CIFAR-100 normalisation (RepDistiller,
    mdistiller): mean ``(0.5071, 0.4867, 0.4408)``, std ``(0.2675, 0.2565, 0.2761)``. Files:
    ``root/cifar-100-python/{train,test,meta}``.

    From YAML: ``data: {class_path: kd_lightning.CIFAR100DataModule, init_args: {root: data/cifar, batch_size: 64}}``.
    """

    dataset_class: type[CIFAR10] = CIFAR100
    dataset_name = "CIFAR-100"
    num_classes = 100
    mean = CIFAR100_MEAN
    std = CIFAR100_STD


def balanced_split(labels: Tensor, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sorted indices ``(held_out, rest)`` with ``size`` held out, spread over the classes as evenly as possible.

    Each class's indices are shuffled (seeded); the held-out set takes the first of every class in turn, so class
    counts differ by at most one where the classes allow it.

    Example:
        >>> held_out, rest = balanced_split(torch.tensor([0, 0, 0, 1, 1, 1]), 2)
        >>> sorted(torch.tensor([0, 0, 0, 1, 1, 1])[held_out].tolist()), len(rest)
        ([0, 1], 4)
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, len(labels)))
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    rank = torch.empty_like(order)
    for label in shuffled.unique():
        members = (shuffled == label).nonzero().squeeze(1)
        rank[members] = torch.arange(len(members))
    by_rank = order[torch.sort(rank, stable=True).indices]
    return by_rank[:size].sort().values, by_rank[size:].sort().values
