import numpy as np
import pytest
import torch

from kd_lightning.data import DigitsDataModule
from kd_lightning.data.digits import random_shift


def test_split_is_stratified_disjoint_and_complete():
    data = DigitsDataModule()
    data.setup()
    sizes = {name: len(split) for name, split in data.splits.items()}
    assert sizes == {"train": 1257, "val": 270, "test": 270}
    for split in data.splits.values():
        counts = np.bincount(split.labels.numpy(), minlength=10)
        assert counts.min() >= 0.09 * len(split) - 3 and counts.max() <= 0.11 * len(split) + 3
    images = [split.images.reshape(len(split), -1) for split in data.splits.values()]
    assert torch.unique(torch.cat(images), dim=0).shape[0] >= 1797 - 20  # digits has a few duplicate images


def test_split_depends_only_on_the_seed():
    first, second, other = DigitsDataModule(seed=1), DigitsDataModule(seed=1), DigitsDataModule(seed=2)
    for data in (first, second, other):
        data.setup()
    assert first.splits["test"].images.equal(second.splits["test"].images)
    assert not first.splits["test"].images.equal(other.splits["test"].images)


def test_training_images_are_standardised():
    data = DigitsDataModule()
    data.setup()
    images = data.splits["train"].images
    assert abs(float(images.mean())) < 1e-4 and abs(float(images.std()) - 1) < 1e-3


def test_batches_carry_indices_when_asked():
    data = DigitsDataModule(batch_size=16, return_index=True)
    data.setup()
    x, y, index = next(iter(data.val_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64 and index.tolist() == list(range(16))
    assert data.splits["val"][3][0].equal(x[3])


def test_augmentation_shifts_training_images_only():
    data = DigitsDataModule(augment=True)
    data.setup()
    torch.manual_seed(0)
    train = data.splits["train"]
    assert any(not train[0][0].equal(train.images[0]) for _ in range(10))
    assert data.splits["val"][0][0].equal(data.splits["val"].images[0])


def test_random_shift_moves_content_by_one_pixel():
    image = torch.zeros(1, 8, 8)
    image[0, 4, 4] = 1.0
    shifted = random_shift(image, max_shift=1, generator=torch.Generator().manual_seed(3))
    row, col = (shifted[0] == 1).nonzero()[0].tolist()
    assert abs(row - 4) <= 1 and abs(col - 4) <= 1 and shifted.sum() == 1


@pytest.mark.parametrize(
    "kwargs", [{"val_fraction": 0.0}, {"test_fraction": 0.6, "val_fraction": 0.5}, {"train_fraction": 0}]
)
def test_bad_fractions_raise(kwargs):
    with pytest.raises(ValueError, match="expected"):
        DigitsDataModule(**kwargs)
