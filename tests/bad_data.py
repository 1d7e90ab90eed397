"""User datamodules with realistic data mistakes, importable by ``class_path: bad_data.BrokenDigits`` in tests."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

MISTAKES = ("nan_pixel", "label_12", "one_hot", "uint8_images", "empty", "bare_tensor", "mismatched_lengths")


class _Inputs(Dataset):
    """Items are bare input tensors, with no label (a dataset written for inference)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class _Mismatched(Dataset):
    """Each item pairs one image with two labels (an off-by-one reshaping of the labels)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[2 * index : 2 * index + 2]


class BrokenDigits(L.LightningDataModule):
    """Random 8x8 'digits' with one deliberate mistake in the training data (validation data is clean).

    Args:
        mistake: one of :data:`MISTAKES`.
        num_classes: the class count the datamodule declares (linked into the model by the CLI).
    """

    def __init__(self, mistake: str = "nan_pixel", num_classes: int = 10) -> None:
        super().__init__()
        if mistake not in MISTAKES:
            raise ValueError(f"unknown mistake {mistake!r}; one of {MISTAKES}")
        self.mistake, self.num_classes = mistake, num_classes
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(64, 1, 8, 8, generator=generator)
        self.labels = torch.randint(0, num_classes, (64,), generator=generator)

    def train_dataloader(self) -> DataLoader:
        images, labels = self.images.clone(), self.labels.clone()
        if self.mistake == "nan_pixel":
            images[3, 0, 2, 5] = float("nan")
        elif self.mistake == "label_12":
            labels[5] = 12
        elif self.mistake == "one_hot":
            return DataLoader(TensorDataset(images, torch.nn.functional.one_hot(labels, 10).float()), batch_size=16)
        elif self.mistake == "uint8_images":
            images = (images.clamp(-2, 2) * 60 + 128).to(torch.uint8)
        elif self.mistake == "empty":
            images, labels = images[:0], labels[:0]
        elif self.mistake == "bare_tensor":
            return DataLoader(_Inputs(images), batch_size=16)
        elif self.mistake == "mismatched_lengths":
            return DataLoader(_Mismatched(images, labels), batch_size=16)
        return DataLoader(TensorDataset(images, labels), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=16)


class DigitsWithoutTest(L.LightningDataModule):
    """The digits data with training and validation loaders only (a datamodule written before its test split)."""

    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        from kd_lightning import DigitsDataModule

        self.digits = DigitsDataModule(batch_size=32)

    def setup(self, stage: str) -> None:
        self.digits.setup(stage)

    def train_dataloader(self) -> DataLoader:
        return self.digits.train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self.digits.val_dataloader()
