"""What the image datamodules share: replayable per-sample augmentation and the four loaders.

Every augmented view is a function of ``(seed, epoch, index)`` (:func:`~kd_lightning.data.resumable.derive_seed`),
never of what the process drew before, so it is the same in the main process, in any worker, in a resumed run and when
a teacher-output cache replays it: :meth:`ReplayableDataset.sample` returns it on demand.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kd_lightning.data.resumable import ResumableDataLoader, run_seed


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, Python's ``random`` and NumPy's global RNG with ``seed``; restore all three after.

    For transforms that draw from the global RNGs (torchvision, timm): inside the block they replay exactly, and the
    caller's random streams are left as they were. CUDA generators are not touched.

    Example:
        >>> with seeded_global_rng(7):
        ...     first = torch.rand(2), random.random()
        >>> with seeded_global_rng(7):
        ...     second = torch.rand(2), random.random()
        >>> first[0].equal(second[0]) and first[1] == second[1]
        True
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class ReplayableDataset(Dataset):
    """Items ``(image, label)`` or ``(image, label, index)``; the view of ``index`` in ``epoch`` is replayable.

    Subclasses implement :meth:`view`. The training loader (:class:`ResumableDataLoader`) calls :meth:`set_epoch`
    before every epoch, and sets :attr:`seed` to the run's data seed.

    A teacher-output cache with ``K`` stored views sets :attr:`views` to ``K``: epoch ``e`` then yields the views of
    epoch ``e mod K`` (:meth:`replayed_epoch`), the ones the cache holds teacher outputs for; the order of the samples
    still changes every epoch (it is the loader's).

    ``labelled = False`` makes a label-free split (a transfer set only the teacher labels): items ``(image,)``.

    Args:
        augment: apply the random training augmentation (``False``: every epoch gives the same, plain view).
        return_index: items carry the sample's index (its position in the split) as a third element.
        seed: seed of the augmentation.
    """

    def __init__(self, augment: bool = False, return_index: bool = False, seed: int = 0) -> None:
        self.augment, self.return_index = augment, return_index
        self.seed, self.epoch = seed, 0
        self.views: int | None = None
        self.labelled = True

    def __len__(self) -> int:
        raise NotImplementedError

    def view(self, index: int, epoch: int) -> tuple[Tensor, int]:
        """The image ``[C, H, W]`` (float, normalised) and label of ``index``, augmented as in ``epoch``."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation ``__getitem__`` returns (called by the training loader before each epoch)."""
        self.epoch = int(epoch)

    def replayed_epoch(self, epoch: int) -> int:
        """The epoch whose views epoch ``epoch`` yields: itself, or ``epoch mod views`` under a K-view cache."""
        return epoch if self.views is None else epoch % self.views

    def sample(self, index: int, epoch: int) -> tuple[Tensor, ...]:
        """Item ``index`` with the view of ``epoch`` (no :meth:`replayed_epoch` mapping): the same every time.

        A label-free split (``labelled = False``) yields ``(image,)``, or ``(image, -100, index)`` with the index.
        """
        image, label = self.view(index, epoch)
        if not self.labelled and not self.return_index:
            return (image,)
        label = torch.as_tensor(label if self.labelled else -100, dtype=torch.int64)
        return (image, label, torch.tensor(index)) if self.return_index else (image, label)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return self.sample(index, self.replayed_epoch(self.epoch))


def normalize(image: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``[C, H, W]`` uint8 pixels (0-255) to floats standardised per channel with ``mean``/``std`` (``[C, 1, 1]``)."""
    return (image.float() / 255 - mean) / std


def channel_stats(values: tuple[float, ...]) -> Tensor:
    """``(c1, c2, c3)`` as a ``[C, 1, 1]`` tensor that broadcasts over an image."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)


class SplitDataModule(L.LightningDataModule):
    """Loaders over ``self.splits["train" | "val" | "test"]`` (filled by the subclass's ``setup``).

    ``train_dataloader`` is a :class:`ResumableDataLoader` whose order and augmentation come from the data seed;
    ``predict_dataloader`` iterates the test split. Subclasses set ``num_classes``, ``mean`` and ``std`` and store
    ``batch_size``, ``num_workers`` and ``shuffle_seed`` in their hyperparameters.
    """

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    collator: Callable[[list[Any]], Any] | None = None
    """The loaders' ``collate_fn`` (``None``: PyTorch's default)."""

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, ReplayableDataset] = {}

    def data_seed(self) -> int:
        """The seed of the training order and augmentation: ``shuffle_seed``, else the run's seed."""
        shuffle_seed = self.hparams.get("shuffle_seed")
        return run_seed() if shuffle_seed is None else int(shuffle_seed)

    def _split(self, name: str) -> Dataset:
        if name not in self.splits:
            raise RuntimeError(
                f"{type(self).__name__} has no {name!r} split yet: call setup() first (the Trainer does it)."
            )
        return self.splits[name]

    def _eval_loader(self, name: str) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self._split(name),
            batch_size=self.hparams.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=self.collator,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled batches in a seeded order; workers are re-created every epoch (they must see the new epoch)."""
        train, seed = self._split("train"), self.data_seed()
        train.seed = seed
        return ResumableDataLoader(
            train, batch_size=self.hparams.batch_size, shuffle=True, seed=seed, num_workers=self.hparams.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order, without augmentation."""
        return self._eval_loader("test")
