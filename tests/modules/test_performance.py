"""Speed and memory options: a half-precision frozen teacher, in-place compilation, channels_last."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning import Classifier, DigitsDataModule, OfflineDistillation
from kd_lightning.data.synthetic import SyntheticImageDataModule
from kd_lightning.models import DigitsCNN, DigitsMLP, resnet8

BF16_RELATIVE_TOLERANCE = 0.03
"""Max |logit difference| of a bfloat16 teacher, relative to the row's largest |logit| (measured 1.4% on digits)."""
FP16_RELATIVE_TOLERANCE = 0.005
"""The same for float16 (measured 0.19% on digits)."""


def make_module(**overrides) -> OfflineDistillation:
    kwargs = dict(
        student=DigitsMLP(hidden=(16,)),
        teacher=DigitsCNN(width=32),
        teacher_weights=TEACHER_WEIGHTS,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    kwargs.update(overrides)
    return OfflineDistillation(**kwargs)


def digits_test_images() -> torch.Tensor:
    datamodule = DigitsDataModule(batch_size=512)
    datamodule.setup("test")
    return torch.cat([batch[0] for batch in datamodule.test_dataloader()])


class StepLosses(L.Callback):
    """Records the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit_losses(module, tmp_path, steps: int = 3, callbacks=(), **trainer_args) -> list[float]:
    """Per-step training losses of a fit of ``module()`` (built after seeding, so every run starts the same)."""
    L.seed_everything(0)
    module = module()
    recorder = StepLosses()
    trainer = fast_trainer(
        tmp_path, max_steps=steps, limit_val_batches=0, callbacks=[recorder, *callbacks], **trainer_args
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, shuffle_seed=0))
    return recorder.losses


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [("bfloat16", BF16_RELATIVE_TOLERANCE), ("float16", FP16_RELATIVE_TOLERANCE)]
)
def test_half_precision_teacher_halves_weights_and_returns_float32_close_to_float32_teacher(dtype, tolerance):
    full, half = make_module(), make_module(teacher_dtype=dtype)
    full_bytes = sum(p.numel() * p.element_size() for p in full.teacher.network.parameters())
    half_bytes = sum(p.numel() * p.element_size() for p in half.teacher.network.parameters())
    assert half_bytes * 2 == full_bytes
    assert all(p.dtype == getattr(torch, dtype) for p in half.teacher.network.parameters())
    images = digits_test_images()
    expected, got = full.teacher_outputs([images])["logits"], half.teacher_outputs([images])["logits"]
    assert got.dtype == torch.float32
    relative = ((got - expected).abs().amax(1) / expected.abs().amax(1)).max()
    assert relative <= tolerance
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.995


def test_half_precision_teacher_features_are_float32():
    from kd_lightning import DistillTerm
    from kd_lightning.losses import ATLoss

    module = make_module(
        student=DigitsCNN(width=8), teacher_dtype="bfloat16", terms=[DistillTerm(ATLoss(), student="layer2")]
    )
    outputs = module.teacher_outputs([torch.randn(4, 1, 8, 8)])
    assert {name: value.dtype for name, value in outputs.items()} == {"logits": torch.float32, "layer2": torch.float32}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_bfloat16_teacher_fits_and_stays_out_of_checkpoints(tmp_path, precision, one_torch_thread):
    module = make_module(teacher_dtype="bfloat16")
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = fast_trainer(
        tmp_path, max_steps=3, precision=precision, enable_checkpointing=True, callbacks=[checkpoint]
    )
    before = {k: v.clone() for k, v in module.student.state_dict().items()}
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 3 and all(torch.isfinite(v).all() for v in trainer.callback_metrics.values())
    assert any(not torch.equal(before[k], v) for k, v in module.student.state_dict().items())
    assert all(p.dtype == torch.bfloat16 for p in module.teacher.network.parameters())
    saved = torch.load(checkpoint.last_model_path, weights_only=True)
    assert not any(key.startswith("teacher.") for key in saved["state_dict"])
    restored = OfflineDistillation.load_from_checkpoint(
        checkpoint.last_model_path, student=DigitsMLP(hidden=(16,)), teacher=DigitsCNN(width=32)
    )
    assert restored.teacher.dtype == torch.bfloat16


def test_unknown_teacher_dtype_names_the_choices():
    with pytest.raises(ValueError, match=r"teacher_dtype to be one of \['float32', 'bfloat16', 'float16'\]"):
        make_module(teacher_dtype="int8")


def test_compile_in_place_keeps_keys_and_gives_the_same_losses(tmp_path, one_torch_thread):
    plain = fit_losses(make_module, tmp_path / "plain")
    modules = []
    compiled = fit_losses(lambda: modules.append(make_module(compile=True)) or modules[0], tmp_path / "compiled")
    module = modules[0]
    assert module.student._compiled_call_impl is not None and module.teacher.network._compiled_call_impl is not None
    assert compiled == pytest.approx(plain, abs=1e-5)
    assert not any("_orig_mod" in key for key in module.state_dict())


def test_compile_names_are_checked_before_training(tmp_path):
    trainer = fast_trainer(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"networks \['student', 'teacher'\] but got \['studnet'\]"):
        trainer.fit(make_module(compile=["studnet"]), datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 0


def test_a_torch_compile_wrapper_is_refused_with_the_in_place_option():
    with pytest.raises(TypeError, match=r"torch.compile\(\.\.\.\) wrapper .*compile: \[student\]"):
        Classifier(torch.compile(DigitsMLP()))
    with pytest.raises(TypeError, match=r"compile: \[teacher\]"):
        make_module(teacher=torch.compile(DigitsCNN(width=32)), teacher_weights=None)


def test_a_network_assigned_after_construction_stops_the_fit(tmp_path):
    module = make_module()
    module.student = DigitsMLP(hidden=(32,))
    trainer = fast_trainer(tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="module.student was replaced after the module was built"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 0


def test_channels_last_converts_weights_and_batches_with_the_same_losses(tmp_path, one_torch_thread):
    def build(**options) -> Classifier:
        return Classifier(resnet8(num_classes=10), num_classes=10, **options)

    def fit(module) -> list[float]:
        L.seed_everything(0)
        recorder = StepLosses()
        data = SyntheticImageDataModule(num_classes=10, image_size=16, train_size=64, batch_size=16, shuffle_seed=0)
        trainer = fast_trainer(tmp_path, max_steps=3, limit_val_batches=0, callbacks=[recorder])
        trainer.fit(module, datamodule=data)
        return recorder.losses

    seen: list[bool] = []
    L.seed_everything(0)
    plain = fit(build())
    L.seed_everything(0)
    module = build(channels_last=True)
    module.student.register_forward_pre_hook(
        lambda net, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    converted = fit(module)
    assert seen and all(seen)  # the 3-channel images reach the network in channels_last
    conv_weights = [p for p in module.parameters() if p.ndim == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    assert converted == pytest.approx(plain, abs=1e-4)
