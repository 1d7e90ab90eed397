"""``kd_lightning.files``: every fault of a file we read is named, and writes never leave half a file behind."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from safetensors.torch import save_file
from torch import nn

from kd_lightning import Classifier, DigitsDataModule
from kd_lightning.files import (
    AtomicCheckpointIO,
    CheckpointFileError,
    MissingCheckpointError,
    atomic_write,
    read_checkpoint,
    read_tensors,
)
from kd_lightning.models import DigitsMLP

TEACHER_FIX = "kd-lightning fit --config configs/digits/teacher.yaml"
CHECKPOINT_FIX = "checkpoints/ folder"


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Lightning checkpoint written by a real (tiny) fit of a Classifier."""
    folder = tmp_path_factory.mktemp("fit")
    trainer = fast_trainer(folder, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(Classifier(network=DigitsMLP(hidden=(8,))), datamodule=DigitsDataModule())
    path = folder / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def _half(source: Path, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


def _fault(path: Path, kind: str, real_checkpoint: Path) -> None:
    """Write the file of one fault at ``path``."""
    if kind == "empty":
        path.touch()
    elif kind == "half safetensors":
        _half(TEACHER_WEIGHTS, path)
    elif kind == "half ckpt":
        _half(real_checkpoint, path)
    elif kind == "html":
        path.write_text('<!DOCTYPE html>\n<html lang="en"><head><title>Sign in to continue</title></head></html>\n')
    elif kind == "directory":
        path.mkdir()
    elif kind == "pickled module":
        torch.save(nn.Linear(4, 3), path)
    elif kind == "strings":
        torch.save({"name": "teacher", "version": "1"}, path)
    elif kind == "garbage":
        path.write_bytes(bytes(range(7, 250)))
    elif kind == "garbage header":
        path.write_bytes((24).to_bytes(8, "little") + b"{this is not json at all}" + bytes(16))
    elif kind == "lfs pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 418048\n")


FAULTS = [
    # kind, file name, reason, words the message must have
    ("missing", "nope.safetensors", "missing", ["not found", "expected a file there but got nothing"]),
    ("empty", "teacher.safetensors", "empty", ["is empty", "but got 0 bytes"]),
    ("half safetensors", "teacher.safetensors", "truncated", ["is truncated: expected 418,048 bytes", "209,024"]),
    ("half ckpt", "teacher.ckpt", "truncated", ["is truncated", "without the end-of-archive record"]),
    ("html", "teacher.pt", "corrupt", ["is an HTML page", "'<!DOCTYPE html>'", "download the raw file"]),
    ("directory", "teacher.pt", "not a file", ["is a directory: expected a file but got a folder"]),
    ("pickled module", "teacher.ckpt", "unsafe", ["refused as unsafe", "`torch.nn.modules.linear.Linear`"]),
    ("strings", "teacher.pt", "not a checkpoint", ["expected a dict of tensors", "'name' is str"]),
    ("garbage", "teacher.pt", "corrupt", ["corrupt or not a weights file", "starts with bytes 07 08 09"]),
    ("garbage", "teacher.safetensors", "corrupt", ["is corrupt", "8-byte little-endian header length"]),
    ("garbage header", "teacher.safetensors", "corrupt", ["JSON header of 24 bytes but it does not parse"]),
    ("lfs pointer", "teacher.safetensors", "corrupt", ["Git LFS pointer", "git lfs pull"]),
]


@pytest.mark.parametrize(("kind", "name", "reason", "words"), FAULTS, ids=[f"{f[0]}-{f[1]}" for f in FAULTS])
def test_every_fault_of_teacher_weights_is_named(tmp_path, real_checkpoint, kind, name, reason, words):
    path = tmp_path / name
    if kind != "missing":
        _fault(path, kind, real_checkpoint)
    with pytest.raises(CheckpointFileError) as error:
        read_tensors(path, what="teacher weights")
    message = str(error.value)
    assert error.value.reason == reason and error.value.path == path
    assert message.startswith(f"teacher weights {str(path)!r} ")
    assert all(word in message for word in words), message
    assert TEACHER_FIX in message, "says how to make a good one"
    assert "weights_only=False" not in message and "weights_only` set to `False`" not in message


def test_missing_file_is_also_a_file_not_found_error_listing_the_folder(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(FileNotFoundError) as error:
        read_tensors(tmp_path / "teacher.safetensors", what="teacher weights")
    assert isinstance(error.value, MissingCheckpointError)
    assert "holds other.safetensors" in str(error.value)


def test_relative_path_is_named_as_given_and_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "t.pt").touch()
    with pytest.raises(CheckpointFileError) as error:
        read_tensors("checkpoints/t.pt")
    assert f"'checkpoints/t.pt' (relative to the working directory {str(tmp_path)!r})" in str(error.value)


def test_directory_of_checkpoints_lists_them(tmp_path, real_checkpoint):
    shutil.copyfile(real_checkpoint, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointFileError, match="holding last.ckpt: pass one of them"):
        read_checkpoint(tmp_path)


def _unreadable_as_nobody(path: Path) -> CheckpointFileError:
    """Read ``path`` with the effective uid of ``nobody`` (root reads any file whatever its mode)."""
    os.seteuid(65534)
    try:
        with pytest.raises(CheckpointFileError) as error:
            read_tensors(path, what="teacher weights")
    finally:
        os.seteuid(0)
    return error.value


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file: the test below drops to uid nobody")
def test_unreadable_file_says_permission_denied(tmp_path):
    path = tmp_path / "teacher.safetensors"
    shutil.copyfile(TEACHER_WEIGHTS, path)
    path.chmod(0)
    try:
        with pytest.raises(CheckpointFileError) as error:
            read_tensors(path, what="teacher weights")
    finally:
        path.chmod(0o644)
    assert error.value.reason == "unreadable" and "permission denied (mode ----------" in str(error.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid nobody needs root")
def test_unreadable_file_says_permission_denied_as_another_user(tmp_path):
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is private to root: nobody cannot reach it
    try:
        folder.chmod(0o755)
        path = folder / "teacher.safetensors"
        shutil.copyfile(TEACHER_WEIGHTS, path)
        path.chmod(0)
        error = _unreadable_as_nobody(path)
        assert error.reason == "unreadable"
        assert "permission denied (mode ----------, owner uid 0, you are uid 65534)" in str(error)
        assert f"chmod a+r {path}" in str(error) and TEACHER_FIX in str(error)
        hidden = tmp_path / "teacher.safetensors"
        shutil.copyfile(TEACHER_WEIGHTS, hidden)
        assert "a folder on the way to it is not searchable" in str(_unreadable_as_nobody(hidden))
    finally:
        shutil.rmtree(folder)


def test_checkpoint_faults_say_where_good_checkpoints_are(tmp_path, real_checkpoint):
    truncated = _half(real_checkpoint, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointFileError) as error:
        read_checkpoint(truncated)
    assert error.value.reason == "truncated" and str(error.value).startswith(f"checkpoint {str(truncated)!r} ")
    assert CHECKPOINT_FIX in str(error.value) and TEACHER_FIX not in str(error.value)
    with pytest.raises(CheckpointFileError, match="got a safetensors file of weights only") as error:
        read_checkpoint(TEACHER_WEIGHTS)
    assert error.value.reason == "not a checkpoint"
    bare = tmp_path / "bare.pt"
    torch.save(DigitsMLP().state_dict(), bare)
    with pytest.raises(CheckpointFileError, match="expected the key\\(s\\) 'state_dict' but got a bare state dict"):
        read_checkpoint(bare)


def test_pickled_module_in_a_checkpoint_points_to_save_hyperparameters(tmp_path):
    path = tmp_path / "module.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"teacher": nn.Linear(2, 2)}}, path)
    with pytest.raises(CheckpointFileError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert error.value.reason == "unsafe" and "`torch.nn.modules.linear.Linear`" in message
    assert "torch.save(model.state_dict(), path)" in message and "save_hyperparameters()" in message
    assert "weights_only=False" not in message


def test_good_files_load(tmp_path, real_checkpoint):
    checkpoint = read_checkpoint(real_checkpoint)
    assert {"state_dict", "epoch", "global_step"} <= checkpoint.keys()
    assert read_tensors(real_checkpoint).keys() == checkpoint["state_dict"].keys()
    assert len(read_tensors(TEACHER_WEIGHTS)) == 26
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": DigitsMLP().state_dict()}, legacy, _use_new_zipfile_serialization=False)
    assert read_tensors(legacy).keys() == DigitsMLP().state_dict().keys()


# ----------------------------------------------------------------- atomic writes
def _half_then_fail(data: bytes):
    def write(temporary: Path) -> None:
        temporary.write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device (simulated)")

    return write


def test_atomic_write_leaves_the_old_file_intact_when_the_writer_fails_midway(tmp_path):
    path = tmp_path / "weights.safetensors"
    shutil.copyfile(TEACHER_WEIGHTS, path)
    good = path.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, _half_then_fail(b"x" * 1000))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["weights.safetensors"], "the temporary file is removed"


def test_atomic_write_where_a_plain_torch_save_breaks_the_file(tmp_path):
    plain, atomic = tmp_path / "plain.ckpt", tmp_path / "atomic.ckpt"
    for path in (plain, atomic):
        torch.save({"w": torch.zeros(10)}, path)
    unpicklable = {"w": torch.ones(10), "callback": lambda: None}
    with pytest.raises(Exception, match="pickle"):
        torch.save(unpicklable, plain)
    with pytest.raises(CheckpointFileError):
        read_checkpoint(plain, required=())
    with pytest.raises(Exception, match="pickle"):
        atomic_write(atomic, lambda temporary: torch.save(unpicklable, temporary))
    assert torch.equal(read_checkpoint(atomic, required=())["w"], torch.zeros(10))


def test_atomic_write_renames_within_the_folder_and_keeps_permissions(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    renames = []
    real_replace = os.replace

    def record(source: str, target: str) -> None:
        renames.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", record)
    path = tmp_path / "sub" / "weights.bin"
    atomic_write(path, lambda temporary: temporary.write_bytes(b"one"))
    path.chmod(0o640)
    atomic_write(path, lambda temporary: temporary.write_bytes(b"two"))
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert all(source.parent == path.parent for source, _ in renames) and len(renames) == 2


def test_atomic_checkpoint_io_keeps_the_previous_checkpoint_when_a_save_fails(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)
    good = path.read_bytes()
    with pytest.raises(Exception, match="pickle"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "hook": lambda: None}, path)
    real_save = torch.save

    def half_save(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        Path(target).write_bytes(Path(target).read_bytes()[:100])
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 2}, path)
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["last.ckpt"]
    assert io.load_checkpoint(path)["epoch"] == 1


def test_trainer_with_atomic_checkpoint_io_saves_resumes_and_names_a_bad_checkpoint(tmp_path):
    def trainer(**overrides) -> L.Trainer:
        return fast_trainer(tmp_path, plugins=[AtomicCheckpointIO()], limit_train_batches=2, **overrides)

    first = trainer(enable_checkpointing=True)
    first.fit(Classifier(network=DigitsMLP(hidden=(8,))), datamodule=DigitsDataModule())
    (saved,) = (tmp_path / "checkpoints").glob("*.ckpt")
    assert read_checkpoint(saved)["global_step"] == 2
    resumed = trainer(max_epochs=2)
    resumed.fit(Classifier(network=DigitsMLP(hidden=(8,))), datamodule=DigitsDataModule(), ckpt_path=saved)
    assert resumed.global_step == 4
    broken = _half(saved, tmp_path / "broken.ckpt")
    with pytest.raises(CheckpointFileError, match=r"checkpoint '.*broken.ckpt' is truncated"):
        trainer(max_epochs=2).fit(
            Classifier(network=DigitsMLP(hidden=(8,))), datamodule=DigitsDataModule(), ckpt_path=broken
        )
