"""CIFAR, ImageFolder and synthetic datamodules: batches, normalisation, replayable augmentation, layout errors.

No real CIFAR files exist here: ``fake_cifar100`` writes a tiny CIFAR-100 in torchvision's pickle format, and the
datamodule reads it through a ``CIFAR100`` subclass whose expected checksums are those of the fake files (torchvision
verifies md5s). That keeps torchvision's whole reading path, integrity check included, under test; the unpatched
datamodule on the same files shows the checksum error.
"""

from __future__ import annotations

import pickle
import random
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fast_trainer
from PIL import Image
from timm.data import create_transform
from torch import nn
from torchvision.datasets import CIFAR100
from torchvision.datasets.utils import calculate_md5
from torchvision.transforms import functional as TF
from torchvision.transforms import v2

from kd_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    ImageFolderDataModule,
    ResumableDataLoader,
    SyntheticImageDataModule,
)
from kd_lightning.data.base import seeded_global_rng
from kd_lightning.data.cifar import CIFAR100_MEAN, CIFAR100_STD, balanced_split
from kd_lightning.modules import Classifier

TRAIN_IMAGES, TEST_IMAGES, FAKE_CLASSES = 40, 20, 5


# ----------------------------------------------------------------- a fake CIFAR-100
def write_fake_cifar100(root: Path) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` with random pixels and labels ``i % FAKE_CLASSES``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES)):
        entry = {
            "data": rng.integers(0, 256, (count, 3 * 32 * 32), dtype=np.uint8),
            "fine_labels": [i % FAKE_CLASSES for i in range(count)],
            "coarse_labels": [0] * count,
            "filenames": [f"{name}_{i}.png" for i in range(count)],
            "batch_label": name,
        }
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {
        "fine_label_names": [f"class{i}" for i in range(100)],
        "coarse_label_names": [f"super{i}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return folder


def datamodule_for_fake_files(folder: Path) -> type[CIFAR100DataModule]:
    """``CIFAR100DataModule`` whose torchvision dataset expects the checksums of the fake files."""
    md5 = {name: calculate_md5(folder / name) for name in ("train", "test", "meta")}
    dataset = type(
        "FakeCIFAR100",
        (CIFAR100,),
        {
            "train_list": [["train", md5["train"]]],
            "test_list": [["test", md5["test"]]],
            "meta": {**CIFAR100.meta, "md5": md5["meta"]},
        },
    )
    return type("FakeCIFAR100DataModule", (CIFAR100DataModule,), {"dataset_class": dataset})


@pytest.fixture
def fake_cifar100(tmp_path: Path) -> tuple[type[CIFAR100DataModule], Path]:
    folder = write_fake_cifar100(tmp_path)
    return datamodule_for_fake_files(folder), tmp_path


def raw_images(folder: Path, split: str) -> np.ndarray:
    entry = pickle.loads((folder / split).read_bytes())
    return entry["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # HWC, as torchvision hands it to PIL


# ----------------------------------------------------------------- CIFAR
def test_cifar_attributes_are_the_benchmark_constants():
    assert CIFAR100DataModule.num_classes == 100 and CIFAR10DataModule.num_classes == 10
    assert CIFAR100DataModule.mean == (0.5071, 0.4867, 0.4408) and CIFAR100DataModule.std == (0.2675, 0.2565, 0.2761)
    assert CIFAR10DataModule.mean == (0.4914, 0.4822, 0.4465) and CIFAR10DataModule.std == (0.2470, 0.2435, 0.2616)


def test_cifar_batches_are_normalised_like_the_benchmark(fake_cifar100):
    datamodule_class, root = fake_cifar100
    data = datamodule_class(root=root, batch_size=8, return_index=True)
    data.setup("fit")
    x, y, index = next(iter(data.val_dataloader()))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert index.tolist() == list(range(8)) and y.tolist() == [i % FAKE_CLASSES for i in range(8)]
    reference = v2.Compose(
        [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
    )
    pixels = raw_images(root / "cifar-100-python", "test")
    expected = torch.stack([reference(Image.fromarray(pixels[i])) for i in range(8)])
    torch.testing.assert_close(x, expected)
    assert data.splits["val"] is data.splits["test"]  # val_size=0: validate on the test set, as the benchmark does
    train_x, train_y = next(iter(data.train_dataloader()))[:2]
    assert train_x.shape == (8, 3, 32, 32) and train_y.dtype == torch.int64


def test_cifar_augmentation_is_a_padded_crop_and_flip_that_replays(fake_cifar100):
    datamodule_class, root = fake_cifar100
    data = datamodule_class(root=root)
    data.setup("fit")
    train = data.splits["train"]
    plain = datamodule_class(root=root, augment=False)
    plain.setup("fit")
    # every reachable view: a 32x32 window of the zero-padded image, flipped or not (torchvision's RandomCrop + flip)
    original = Image.fromarray(raw_images(root / "cifar-100-python", "train")[3])
    normalise = v2.Compose(
        [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR100_MEAN, CIFAR100_STD)]
    )
    padded = TF.pad(original, 4)
    views = [normalise(TF.crop(padded, top, left, 32, 32)) for top in range(9) for left in range(9)]
    views += [view.flip(-1) for view in views]
    seen = []
    for epoch in range(4):
        image = train.sample(3, epoch)[0]
        assert train.sample(3, epoch)[0].equal(image)  # replays exactly
        assert any(torch.allclose(image, view, atol=1e-6) for view in views)
        seen.append(image)
    assert any(not seen[0].equal(other) for other in seen[1:])  # epochs differ
    assert any(not view.equal(plain.splits["train"][3][0]) for view in seen)  # augmentation changes the image


def test_cifar_training_loader_yields_the_replayable_views(fake_cifar100):
    datamodule_class, root = fake_cifar100
    data = datamodule_class(root=root, batch_size=16, return_index=True, shuffle_seed=5)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    loader.set_epoch(2)
    x, _, index = next(iter(loader))
    train = data.splits["train"]
    expected = torch.stack([train.sample(int(i), 2)[0] for i in index])
    assert x.equal(expected)


def test_cifar_held_out_validation_is_balanced_disjoint_and_seeded(fake_cifar100):
    datamodule_class, root = fake_cifar100
    data = datamodule_class(root=root, val_size=10, split_seed=1)
    data.setup("fit")
    train, val, test = (data.splits[name] for name in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (TRAIN_IMAGES - 10, 10, TEST_IMAGES)
    assert torch.bincount(val.labels).tolist() == [2] * FAKE_CLASSES and not val.augment
    everything = torch.cat([train.images, val.images]).flatten(1)
    assert torch.unique(everything, dim=0).shape[0] == TRAIN_IMAGES
    labels = torch.arange(TRAIN_IMAGES) % FAKE_CLASSES
    held_out, rest = balanced_split(labels, 10, seed=1)
    assert torch.cat([held_out, rest]).sort().values.equal(torch.arange(TRAIN_IMAGES))
    assert held_out.equal(balanced_split(labels, 10, seed=1)[0]) and not held_out.equal(
        balanced_split(labels, 10, seed=2)[0]
    )


def test_cifar_missing_files_say_where_to_put_them(tmp_path):
    data = CIFAR100DataModule(root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as error:
        data.setup("fit")
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in message and "{train,test,meta}" in message
    assert "download: true" in message and "copy the extracted cifar-100-python folder" in message
    assert "cifar-100-python.tar.gz" in message and "http" not in message
    assert "does not exist" in message


def test_cifar_a_missing_file_is_named(fake_cifar100):
    datamodule_class, root = fake_cifar100
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"but \S+cifar-100-python.meta is missing\. Fix: set `download: true`"):
        datamodule_class(root=root).setup("fit")


def test_cifar_files_with_wrong_checksums_are_reported(fake_cifar100):
    _, root = fake_cifar100
    with pytest.raises(ValueError, match="fail torchvision's checksum.*Delete"):
        CIFAR100DataModule(root=root).setup("fit")


def test_cifar_download_without_network_is_a_clear_error(tmp_path):
    class Offline(CIFAR100):
        def download(self):
            raise urllib.error.URLError("no route to host")

    offline = type("OfflineCIFAR100DataModule", (CIFAR100DataModule,), {"dataset_class": Offline})
    with pytest.raises(RuntimeError, match="could not download CIFAR-100.*no network access.*copy the extracted"):
        offline(root=tmp_path, download=True).prepare_data()


def test_cifar_rejects_a_bad_val_size(fake_cifar100):
    datamodule_class, root = fake_cifar100
    with pytest.raises(ValueError, match="expected val_size"):
        CIFAR100DataModule(val_size=-1)
    with pytest.raises(ValueError, match=f"expected val_size < {TRAIN_IMAGES}"):
        datamodule_class(root=root, val_size=TRAIN_IMAGES).setup("fit")


# ----------------------------------------------------------------- ImageFolder
def write_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class=(4, 2)) -> Path:
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_image_folder_batches_and_classes(tmp_path):
    root = write_image_folder(tmp_path)
    data = ImageFolderDataModule(root=root, input_size=32, batch_size=6, num_workers=0, return_index=True)
    assert data.num_classes == 3 and data.classes == ["cat", "dog", "owl"]
    assert data.mean == (0.485, 0.456, 0.406) and data.std == (0.229, 0.224, 0.225)
    data.setup("fit")
    x, y, index = next(iter(data.train_dataloader()))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, y, index = next(iter(data.val_dataloader()))
    assert y.tolist() == [0, 0, 1, 1, 2, 2] and index.tolist() == list(range(6))
    reference = create_transform((3, 32, 32), is_training=False)
    torch.testing.assert_close(x[2], reference(Image.open(root / "val" / "dog" / "0.png").convert("RGB")))


@pytest.mark.parametrize("auto_augment", [None, "rand-m9-mstd0.5-inc1", "augmix-m3-w2"])
def test_image_folder_augmentation_replays_and_leaves_the_global_rng_alone(tmp_path, auto_augment):
    root = write_image_folder(tmp_path)
    data = ImageFolderDataModule(root=root, input_size=32, num_workers=0, auto_augment=auto_augment)
    data.setup("fit")
    train = data.splits["train"]
    torch.manual_seed(0)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    views = [train.sample(1, epoch)[0] for epoch in range(3)]
    assert torch.get_rng_state().equal(before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    assert all(train.sample(1, epoch)[0].equal(view) for epoch, view in enumerate(views))
    assert not views[0].equal(views[1]) and not views[1].equal(views[2])
    plain = ImageFolderDataModule(root=root, input_size=32, num_workers=0, augment=False)
    plain.setup("fit")
    assert views[0].shape == plain.splits["train"][1][0].shape and not views[0].equal(plain.splits["train"][1][0])
    assert train[1][0].equal(views[0])  # __getitem__ is epoch 0 until the loader sets another


def test_image_folder_replays_in_worker_processes(tmp_path):
    root = write_image_folder(tmp_path)
    data = ImageFolderDataModule(root=root, input_size=32, batch_size=4, num_workers=1, return_index=True)
    data.setup("fit")
    loader = data.train_dataloader()
    loader.set_epoch(1)
    for x, _, index in loader:  # the whole epoch: the worker then shuts down at once
        assert x.equal(torch.stack([data.splits["train"].sample(int(i), 1)[0] for i in index]))


def _remove(path: Path) -> None:
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if child.is_file() else child.rmdir()
    path.rmdir()


def _flat_val(root: Path) -> None:
    for image in (root / "val").rglob("*.png"):
        image.rename(root / "val" / f"{image.parent.name}_{image.name}")
    for folder in [p for p in (root / "val").iterdir() if p.is_dir()]:
        folder.rmdir()


def _empty_class(root: Path) -> None:
    for image in (root / "train" / "dog").iterdir():
        image.unlink()
    (root / "train" / "dog" / "notes.txt").write_text("not an image")


def _extra_class(root: Path) -> None:
    (root / "train" / "emu").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "emu" / "0.png")


@pytest.mark.parametrize(
    ("damage", "error", "pattern"),
    [
        (
            lambda root: _remove(root),
            FileNotFoundError,
            r"root='.*' but the folder does not exist \(expected layout: .*/train/<class>/",
        ),
        (lambda root: _remove(root / "train"), FileNotFoundError, r"expected the folder .*train .*does not exist"),
        (lambda root: _remove(root / "val"), FileNotFoundError, r"expected the folder .*val .*does not exist"),
        (_flat_val, ValueError, r"expected class folders in .*val .*holds 6 image file\(s\) directly"),
        (_empty_class, ValueError, r"expected images in the class folder .*train.dog but found none"),
        (_extra_class, ValueError, r"same class folders .*1 are only in train/ \['emu'\] and 0 only in val/"),
    ],
    ids=["no-root", "no-train", "no-val", "flat-val", "empty-class", "different-classes"],
)
def test_image_folder_wrong_layouts_are_clear_errors(tmp_path, damage, error, pattern):
    root = write_image_folder(tmp_path / "imagenet")
    damage(root)
    with pytest.raises(error, match=pattern):
        ImageFolderDataModule(root=root)


def test_image_folder_given_num_classes_is_checked_in_setup(tmp_path):
    assert ImageFolderDataModule(root=tmp_path / "later", num_classes=4).num_classes == 4  # built without files
    data = ImageFolderDataModule(root=write_image_folder(tmp_path / "now"), num_classes=4)
    with pytest.raises(ValueError, match="expected 4 classes .* has 3 class folders; set num_classes: 3"):
        data.setup("fit")


# ----------------------------------------------------------------- synthetic
def _images(data: SyntheticImageDataModule, split: str) -> torch.Tensor:
    return torch.stack([data.splits[split][i][0] for i in range(len(data.splits[split]))])


def test_synthetic_is_deterministic_per_seed_and_split():
    first, second, other = (
        SyntheticImageDataModule(num_classes=4, image_size=(6, 5), channels=2, seed=s) for s in (1, 1, 2)
    )
    for data in (first, second, other):
        data.setup()
    assert _images(first, "train").shape == (512, 2, 6, 5) and first.input_shape == (2, 6, 5)
    assert _images(first, "train").equal(_images(second, "train"))
    assert not _images(first, "train").equal(_images(other, "train"))
    assert not _images(first, "val").equal(_images(first, "test"))
    assert first.mean == (0.0, 0.0) and first.std == (1.0, 1.0) and first.num_classes == 4


def test_synthetic_images_carry_a_class_pattern_only_when_learnable():
    def nearest_mean_accuracy(learnable: bool) -> float:
        data = SyntheticImageDataModule(num_classes=10, image_size=8, train_size=200, val_size=100, learnable=learnable)
        data.setup()
        train, val = _images(data, "train").flatten(1), _images(data, "val").flatten(1)
        labels = torch.arange(200) % 10
        means = torch.stack([train[labels == c].mean(0) for c in range(10)])
        predicted = torch.cdist(val, means).argmin(1)
        return float((predicted == torch.arange(100) % 10).float().mean())

    assert nearest_mean_accuracy(True) > 0.95
    assert nearest_mean_accuracy(False) < 0.4


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="expected num_classes to be an integer >= 1"):
        SyntheticImageDataModule(num_classes=0)
    with pytest.raises(ValueError, match="expected height to be an integer >= 1"):
        SyntheticImageDataModule(image_size=(0, 4))


def test_synthetic_fit_with_a_classifier_passes_the_pre_training_checks(tmp_path):
    data = SyntheticImageDataModule(
        num_classes=10, image_size=8, train_size=256, val_size=64, test_size=32, batch_size=32
    )
    network = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    )
    model = Classifier(network, num_classes=data.num_classes)
    trainer = fast_trainer(tmp_path, max_epochs=2, limit_train_batches=8)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 16 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert isinstance(data.train_dataloader(), ResumableDataLoader)
    batches = list(data.predict_dataloader())
    assert sum(len(x) for x, _ in batches) == 32 and model(batches[0][0]).shape == (32, 10)


def test_seeded_global_rng_restores_every_generator():
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    expected = float(torch.rand(())), random.random(), float(np.random.rand())
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    with seeded_global_rng(11):
        torch.rand(5), random.random(), np.random.rand(4)
    assert (float(torch.rand(())), random.random(), float(np.random.rand())) == expected
