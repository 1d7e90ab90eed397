import logging
import os
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import torch
from helpers import fast_trainer
from lightning.pytorch.trainer.states import TrainerStatus
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning.callbacks import ExportWeights, save_state_dict
from kd_lightning.core.networks import freeze
from kd_lightning.files import CheckpointFileError
from kd_lightning.files.weights import load_weights, read_state_dict, strip_prefixes
from kd_lightning.models import DigitsCNN, DigitsMLP


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("prefix", "suffix", "wrap"),
    [
        ("", ".safetensors", None),
        ("", ".pt", None),
        ("model.", ".pt", "model"),
        ("module._orig_mod.", ".pth", None),
        ("student.", ".ckpt", "state_dict"),
    ],
)
def test_load_weights_strips_wrapper_prefixes(tmp_path, prefix, suffix, wrap):
    source = DigitsMLP(hidden=(8,))
    state = {prefix + key: value for key, value in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    target = load_weights(DigitsMLP(hidden=(8,)), path)
    assert _same_weights(source, target)


def test_strip_prefixes_prefers_the_network_that_matches():
    student, teacher = DigitsMLP(hidden=(8,)), DigitsCNN(width=4)
    mixed = {f"student.{k}": v for k, v in student.state_dict().items()}
    mixed |= {f"teacher.{k}": v for k, v in teacher.state_dict().items()}
    assert strip_prefixes(mixed, set(teacher.state_dict())).keys() == teacher.state_dict().keys()
    assert strip_prefixes(mixed, set(student.state_dict())).keys() == student.state_dict().keys()


def test_missing_checkpoint_names_path_and_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        read_state_dict("nope.ckpt")
    assert f"'nope.ckpt' (relative to the working directory {str(tmp_path)!r}) not found" in str(error.value)
    assert "kd-lightning fit --config configs/digits/teacher.yaml" in str(error.value)
    assert "cp" in str(error.value) and "checkpoints/" in str(error.value)


def test_bad_teacher_file_is_named_by_load_weights(tmp_path):
    path = tmp_path / "teacher.safetensors"
    path.touch()
    with pytest.raises(CheckpointFileError, match=r"teacher weights '.*teacher.safetensors' is empty"):
        load_weights(DigitsCNN(width=4), path)


def test_checkpoint_of_other_architecture_lists_keys(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(DigitsMLP().state_dict(), path)
    with pytest.raises(ValueError) as error:
        load_weights(DigitsCNN(width=4), path)
    message = str(error.value)
    assert "does not fit DigitsCNN" in message
    assert "missing keys: head.1.bias, head.1.weight" in message and "(25 in all)" in message
    assert "unexpected keys: head.bias, head.weight, layer1.0.bias" in message
    assert "layer1.0.weight: checkpoint (32, 64) vs model (4, 4, 3, 3)" in message


def test_checkpoint_of_other_width_lists_shape_mismatches(tmp_path):
    path = tmp_path / "cnn.safetensors"
    save_file(DigitsCNN(width=8).state_dict(), str(path))
    with pytest.raises(ValueError, match=r"shape mismatches: head.1.weight: checkpoint \(10, 32\) vs model \(10, 16\)"):
        load_weights(DigitsCNN(width=4), path)


def test_freeze_turns_off_gradients_and_training():
    model = freeze(DigitsCNN(width=4))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())


# ----------------------------------------------------------------- ExportWeights
class TinyRegressor(L.LightningModule):
    """The smallest module ExportWeights can export: a ``student`` and a training step."""

    def __init__(self, poison: bool = False, skip_every_step: bool = False) -> None:
        super().__init__()
        self.student = torch.nn.Linear(4, 2)
        self.poison, self.skip_every_step = poison, skip_every_step

    def training_step(self, batch, batch_idx):
        if self.skip_every_step:
            return None
        inputs, target = batch
        return torch.nn.functional.mse_loss(self.student(inputs), target)

    def on_train_end(self) -> None:
        if self.poison:
            with torch.no_grad():
                self.student.bias[1] = float("nan")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = TensorDataset(torch.randn(8, 4), torch.randn(8, 2))
        return DataLoader(data, batch_size=4)


def _fit(tmp_path, module: L.LightningModule, export: ExportWeights, **overrides) -> L.Trainer:
    trainer = fast_trainer(tmp_path, callbacks=[export], limit_val_batches=0, **overrides)
    trainer.fit(module)
    return trainer


@pytest.fixture
def existing(tmp_path):
    """An export from an earlier run, which a bad run must leave byte for byte."""
    path = tmp_path / "export" / "teacher.safetensors"
    path.parent.mkdir()
    save_file(torch.nn.Linear(4, 2).state_dict(), str(path))
    return path


@pytest.fixture
def lightning_log(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    return caplog


@pytest.mark.parametrize(
    ("overrides", "module"),
    [({"max_epochs": 0}, {}), ({"limit_train_batches": 0}, {}), ({}, {"skip_every_step": True})],
    ids=["max_epochs=0", "limit_train_batches=0", "every step skipped"],
)
def test_a_fit_without_optimizer_steps_exports_nothing(tmp_path, existing, overrides, module):
    before = existing.read_bytes()
    expected = "the weights are not newly trained; an existing file there is left as it was"
    with pytest.warns(
        UserWarning, match=f"ExportWeights: not exporting to {existing}: expected the fit to .*{expected}"
    ):
        _fit(tmp_path, TinyRegressor(**module), ExportWeights(str(existing)), **overrides)
    assert existing.read_bytes() == before


def test_nonfinite_weights_are_not_exported(tmp_path, existing):
    before = existing.read_bytes()
    with pytest.warns(UserWarning, match=r"expected finite weights but 'bias' \(1 of its 2 values are NaN/inf\)"):
        _fit(tmp_path, TinyRegressor(poison=True), ExportWeights(str(existing), copy_to=str(tmp_path / "copy.pt")))
    assert existing.read_bytes() == before and not (tmp_path / "copy.pt").exists()


def test_a_failed_fit_exports_nothing(tmp_path, existing):
    before = existing.read_bytes()

    class Failing(TinyRegressor):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("out of memory (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        _fit(tmp_path, Failing(), ExportWeights(str(existing)))
    assert existing.read_bytes() == before
    trainer = fast_trainer(tmp_path)
    trainer.state.status = TrainerStatus.INTERRUPTED
    assert "ended as interrupted" in ExportWeights(str(existing)).reason_not_to_export(trainer)


def test_replacing_an_export_is_logged_and_copy_to_is_opt_in(tmp_path, existing, lightning_log):
    installed = tmp_path / "checkpoints" / "teacher.safetensors"
    installed.parent.mkdir()
    installed.write_bytes(existing.read_bytes())
    _fit(tmp_path, TinyRegressor(), ExportWeights(str(existing)))
    assert f"ExportWeights: replacing {existing} (" in lightning_log.text and "kB, modified 20" in lightning_log.text
    assert installed.read_bytes() != existing.read_bytes(), "copy_to is off by default"
    module = TinyRegressor()
    _fit(tmp_path, module, ExportWeights(str(existing), copy_to=str(installed)))
    assert f"ExportWeights: replacing {installed} (" in lightning_log.text
    assert installed.read_bytes() == existing.read_bytes()
    assert _same_weights(load_weights(torch.nn.Linear(4, 2), installed), module.student)
    with pytest.raises(ValueError, match="expected copy_to to be a second file"):
        ExportWeights(str(existing), copy_to=str(existing))


def test_save_state_dict_leaves_the_old_file_when_the_writer_fails_midway(existing, monkeypatch):
    before = existing.read_bytes()

    def half_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", half_save_file)
    with pytest.raises(OSError, match="No space left"):
        save_state_dict(torch.nn.Linear(4, 2).state_dict(), existing)
    assert existing.read_bytes() == before and os.listdir(existing.parent) == [existing.name]
