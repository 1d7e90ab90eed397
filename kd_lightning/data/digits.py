"""``DigitsDataModule``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), no download.

The training loader is a :class:`~kd_lightning.data.resumable.ResumableDataLoader` and the augmentation of every sample
is drawn from ``(seed, epoch, index)``: a run resumed from a mid-epoch checkpoint sees the same batches, in the same
order and with the same shifts, as the run that was interrupted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor

from kd_lightning.core.tokens import IGNORE_INDEX
from kd_lightning.data.base import ReplayableDataset, SplitDataModule
from kd_lightning.data.resumable import derive_seed


def random_shift(image: Tensor, max_shift: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Shift a ``[C, H, W]`` image by up to ``max_shift`` pixels in each direction, filling with the border value.

    Example:
        >>> image = torch.arange(16.0).view(1, 4, 4)
        >>> random_shift(image, max_shift=0).equal(image)
        True
    """
    if max_shift == 0:
        return image
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
    padded = torch.nn.functional.pad(image.unsqueeze(0), [max_shift] * 4, mode="replicate").squeeze(0)
    height, width = image.shape[-2:]
    top, left = max_shift + dy, max_shift + dx
    return padded[..., top : top + height, left : left + width]


class DigitsDataset(ReplayableDataset):
    """Images ``[N, 1, 8, 8]`` (standardised) and labels ``[N]``; items are ``(x, y)`` or ``(x, y, index)``.

    With ``max_shift > 0`` every item is randomly shifted; the shift of sample ``index`` in epoch ``epoch`` is drawn
    from ``derive_seed(seed, epoch, index)``, never from the global RNG, so it is the same in every process (workers,
    a resumed run) and :meth:`sample` replays it. The training loader sets the epoch (:meth:`set_epoch`).

    Args:
        images: ``[N, 1, 8, 8]``.
        labels: ``[N]``.
        max_shift: largest shift in pixels (0: no augmentation).
        return_index: items carry the sample's index as a third element.
        seed: seed of the augmentation.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, max_shift: int = 0, return_index: bool = False, seed: int = 0
    ) -> None:
        super().__init__(augment=max_shift > 0, return_index=return_index, seed=seed)
        self.images, self.labels, self.max_shift = images, labels, max_shift

    def __len__(self) -> int:
        return len(self.labels)

    def view(self, index: int, epoch: int) -> tuple[Tensor, Tensor]:
        """Image ``index`` ``[1, 8, 8]``, shifted as in ``epoch``, and its label."""
        image = self.images[index]
        if self.max_shift > 0:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
            image = random_shift(image, self.max_shift, generator=generator)
        return image, self.labels[index]


def _unlabelled_share(train: np.ndarray, labels: np.ndarray, hp: Any) -> np.ndarray:
    """The training samples whose labels are hidden: all but a stratified, seeded ``labelled_fraction`` of them."""
    _, unlabelled = train_test_split(
        train, train_size=hp.labelled_fraction, stratify=labels[train], random_state=hp.seed
    )
    return unlabelled


class DigitsDataModule(SplitDataModule):
    """Seeded, stratified train/val/test split of ``sklearn.datasets.load_digits``.

    Pixels (0-16) are standardised with the training split's mean and standard deviation. The training loader is a
    :class:`~kd_lightning.data.resumable.ResumableDataLoader`: its order in epoch ``e`` comes from
    ``(shuffle_seed, e)``, the shifts from ``(shuffle_seed, e, index)``, and its position is saved in checkpoints, so
    resuming from a mid-epoch checkpoint continues the interrupted epoch exactly.

    Args:
        batch_size: samples per batch.
        num_workers: dataloader worker processes.
        val_fraction: share of all samples held out for validation.
        test_fraction: share of all samples held out for testing.
        seed: seed of the split (independent of the training seed).
        augment: one-pixel random shifts of the training images.
        return_index: batches are ``(x, y, index)`` with the sample's position in its split (for per-sample state).
        train_fraction: use only this share of the training split (stratified), for low-data experiments.
        shuffle_seed: seed of the training order and augmentation; ``None`` uses the run's seed (``seed_everything``,
            0 when unset), read when the training loader is built, so every seed of a benchmark sees its own order.
        labelled_fraction: keep the labels of only this share of the training split (stratified, seeded by ``seed``)
            — a transfer set whose other samples only the teacher can label (``-100`` marks them; the hard-label loss
            skips them). ``0``: no training labels at all, batches ``(x,)`` (``(x, -100, index)`` with
            ``return_index``); train with ``ce_weight: 0``. Validation and test keep their labels.
    """

    num_classes = 10
    input_shape = (1, 8, 8)
    class_names = tuple("0123456789")

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        augment: bool = False,
        return_index: bool = False,
        train_fraction: float = 1.0,
        shuffle_seed: int | None = None,
        labelled_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(
                f"expected 0 < val_fraction, test_fraction and val_fraction + test_fraction < 1 but got "
                f"val_fraction={val_fraction}, test_fraction={test_fraction}."
            )
        if not 0 < train_fraction <= 1:
            raise ValueError(f"expected 0 < train_fraction <= 1 but got train_fraction={train_fraction}.")
        if not 0 <= labelled_fraction <= 1:
            raise ValueError(f"expected 0 <= labelled_fraction <= 1 but got labelled_fraction={labelled_fraction}.")
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        digits = load_digits()
        images = digits.images.astype(np.float32)[:, None]
        labels = digits.target.astype(np.int64)
        indices = np.arange(len(labels))
        train_val, test = train_test_split(indices, test_size=hp.test_fraction, stratify=labels, random_state=hp.seed)
        val_share = hp.val_fraction / (1 - hp.test_fraction)
        train, val = train_test_split(train_val, test_size=val_share, stratify=labels[train_val], random_state=hp.seed)
        if hp.train_fraction < 1:
            train, _ = train_test_split(
                train, train_size=hp.train_fraction, stratify=labels[train], random_state=hp.seed
            )
        train_labels = labels.copy()
        if hp.labelled_fraction < 1:
            unlabelled = train if hp.labelled_fraction == 0 else _unlabelled_share(train, labels, hp)
            train_labels[unlabelled] = IGNORE_INDEX
        mean, std = images[train].mean(), images[train].std()
        pixels = torch.from_numpy((images - mean) / std)
        self.normalization = {"mean": (float(mean),), "std": (float(std),), "scale": 1.0}  # of the raw 0-16 pixels
        for name, split in (("train", train), ("val", val), ("test", test)):
            shift = 1 if (hp.augment and name == "train") else 0
            split_labels = torch.from_numpy(train_labels if name == "train" else labels)
            split = torch.from_numpy(np.sort(split))
            self.splits[name] = DigitsDataset(
                pixels[split], split_labels[split], max_shift=shift, return_index=hp.return_index
            )
            self.splits[name].labelled = not (name == "train" and hp.labelled_fraction == 0)
