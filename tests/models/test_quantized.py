"""Quantization-aware distillation: the fake-quantized copy of the teacher (kd_lightning.models.quantized), a QAD run
of OfflineDistillation with it (training, strict checkpoint reload, the CLI's dry run and reload), its conversion to
real int8 and the TorchScript export (kd_lightning.ConvertQuantized).

Tolerance of the int8 network against the fake-quantized one it comes from, on the digits test split: logits within
2 quantization steps of the output (2 x the scale of the last layer's output quantizer, about 0.3 on logits of
magnitude ~10) for at least 99% of the values, and the same top-1 class on at least 98% of the images. Within 2 steps:
the fake-quantized network computes in float and rounds to the int8 grid after each layer, the int8 kernels
accumulate in int32 and requantize, so a value on a rounding boundary can round either way at each layer. The rest
(0.4% of the values were seen there): fake quantization clips activations at the x86 backend's 7-bit maximum, the
int8 kernels at 8 bits, so an activation above the range observed in training differs by more (see the module
docstring of kd_lightning.models.quantized).
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import warnings

import lightning as L
import pytest
import torch
import yaml
from helpers import CONFIGS, ROOT, TEACHER_WEIGHTS, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.ao.nn.intrinsic import qat as intrinsic_qat
from torch.ao.nn.intrinsic import quantized as intrinsic_quantized
from torch.ao.nn.quantized import Linear as QuantizedLinear

from kd_lightning import Classifier, ConvertQuantized, DigitsDataModule, OfflineDistillation
from kd_lightning.cli import build_cli
from kd_lightning.files.weights import load_weights
from kd_lightning.models import DigitsCNN, resnet8, timm_model
from kd_lightning.models.quantized import (
    QuantizableBasicBlock,
    QuantizedNetwork,
    convert_quantized,
    int8_runtime,
    quantized_copy,
    save_quantized,
)

TINY_CLI = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    torch.manual_seed(0)


def digits_test_batch(size: int = 270) -> tuple[torch.Tensor, torch.Tensor]:
    data = DigitsDataModule(batch_size=size)
    data.setup("test")
    return next(iter(data.test_dataloader()))


def teacher() -> nn.Module:
    return DigitsCNN(width=32)


# Fused module of the copy -> the teacher's modules it was made of (conv weight; BatchNorm under ``bn.``).
FUSED = {
    "stem.0": ("stem.0", "stem.1"),
    "layer1.0": ("layer1.0", "layer1.1"),
    "layer3.1.0": ("layer3.1.0", "layer3.1.1"),
}


def test_the_copy_is_the_teacher_fake_quantized_with_its_weights_exactly():
    architecture = DigitsCNN(width=32)
    untouched = {name: value.clone() for name, value in architecture.state_dict().items()}
    student = quantized_copy(architecture, weights=str(TEACHER_WEIGHTS))
    trained = load_weights(DigitsCNN(width=32), TEACHER_WEIGHTS)
    assert isinstance(student, QuantizedNetwork) and student.training
    assert all(parameter.requires_grad for parameter in student.parameters())
    network, source = dict(student.network.named_modules()), dict(trained.named_modules())
    for fused, (conv, bn) in FUSED.items():
        assert isinstance(network[fused], intrinsic_qat.ConvBnReLU2d)
        assert torch.equal(network[fused].weight, source[conv].weight)
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(network[fused].bn, name), getattr(source[bn], name)), f"{fused}.bn.{name}"
        assert network[fused].weight.data_ptr() != source[conv].weight.data_ptr()
        assert network[fused].weight_fake_quant.scale.shape == (source[conv].out_channels,)  # per channel, from init
    assert torch.equal(student.network.head[1].weight, trained.head[1].weight)
    assert all(torch.equal(value, untouched[name]) for name, value in architecture.state_dict().items())


def test_observers_update_in_training_mode_only():
    student = quantized_copy(DigitsCNN(width=8))
    ranges = student.quant.activation_post_process.activation_post_process
    x = torch.randn(8, 1, 8, 8)
    student.eval()
    with torch.no_grad():
        student(x)
    assert torch.isinf(ranges.min_val), "an eval forward set the input range"
    student.train()
    student(x)
    assert torch.isclose(ranges.min_val, x.min()) and torch.isclose(ranges.max_val, x.max())
    seen = ranges.min_val.clone()
    student.training = False  # Lightning restores modes by assignment, without calling train()
    with torch.no_grad():
        student(x * 10)
    assert torch.equal(ranges.min_val, seen)


def qad_module(student: nn.Module | None = None) -> OfflineDistillation:
    return OfflineDistillation(
        student=student or quantized_copy(teacher(), weights=str(TEACHER_WEIGHTS)),
        teacher=teacher(),
        teacher_weights=str(TEACHER_WEIGHTS),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
    )


def test_qad_trains_reloads_strictly_converts_to_int8_and_exports(tmp_path):
    module = qad_module()
    start = {name: value.clone() for name, value in module.student.state_dict().items()}
    convert = ConvertQuantized(str(tmp_path / "int8.pt"))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    trainer = fast_trainer(tmp_path, limit_train_batches=6, enable_checkpointing=True, callbacks=[checkpoint, convert])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 6
    moved = [name for name, value in module.student.state_dict().items() if not torch.equal(value, start[name])]
    assert "network.stem.0.weight" in moved and "network.stem.0.activation_post_process.scale" in moved

    restored = OfflineDistillation.load_from_checkpoint(
        checkpoint.best_model_path,
        student=quantized_copy(teacher(), weights=str(TEACHER_WEIGHTS)),
        teacher=teacher(),
        teacher_weights=str(TEACHER_WEIGHTS),
        strict=True,
    )
    saved = torch.load(checkpoint.best_model_path, weights_only=True)["state_dict"]
    for key, value in restored.student.state_dict().items():
        assert torch.equal(value, saved[f"student.{key}"]), key

    int8 = convert_quantized(restored.student)
    network = dict(int8.network.named_modules())
    for fused in FUSED:
        assert type(network[fused]) is intrinsic_quantized.ConvReLU2d
        assert network[fused].weight().dtype == torch.qint8  # unpacked from fbgemm's packed int8 weights
        assert network[fused].weight().q_per_channel_scales().shape == (network[fused].out_channels,)
    assert type(network["head.1"]) is QuantizedLinear and network["head.1"].weight().dtype == torch.qint8
    assert not any(p.is_floating_point() for p in int8.parameters())

    x, y = digits_test_batch()
    restored.student.eval()
    with torch.no_grad(), int8_runtime():
        fake, real = restored.student(x), int8(x)
        exported = torch.jit.load(str(tmp_path / "int8.pt"))(x)
    step = restored.student.network.head[1].activation_post_process.scale.item()
    assert ((real - fake).abs() <= 2 * step + 1e-6).float().mean() >= 0.99
    assert (real.argmax(1) == fake.argmax(1)).float().mean() >= 0.98
    assert (real.argmax(1) == y).float().mean() > 0.95
    assert torch.equal(exported, real)  # the callback converted the best checkpoint
    assert convert.size == (tmp_path / "int8.pt").stat().st_size


def test_a_qad_run_resumes_from_its_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = fast_trainer(tmp_path, limit_train_batches=3, enable_checkpointing=True, callbacks=[checkpoint])
    first.fit(qad_module(), datamodule=DigitsDataModule(batch_size=32))
    resumed = qad_module()
    second = fast_trainer(tmp_path, max_epochs=2, limit_train_batches=3, enable_checkpointing=True)
    second.fit(resumed, datamodule=DigitsDataModule(batch_size=32), ckpt_path=checkpoint.last_model_path)
    assert second.global_step == 6
    assert not torch.isinf(resumed.student.quant.activation_post_process.activation_post_process.min_val)


@pytest.mark.slow
def test_int8_torchscript_is_smaller_and_reloads_without_kd_lightning(tmp_path):
    student = quantized_copy(teacher(), weights=str(TEACHER_WEIGHTS))
    x, _ = digits_test_batch(64)
    student.train()
    with torch.no_grad():
        student(x)  # observe activation ranges (BatchNorm statistics change too: no matter here)
    int8 = convert_quantized(student)
    size = save_quantized(int8, tmp_path / "int8.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(teacher().eval()), str(tmp_path / "float.pt"))
    assert size < 0.5 * (tmp_path / "float.pt").stat().st_size
    code = (
        "import sys, torch; sys.modules['kd_lightning'] = None; m = torch.jit.load(sys.argv[1]); "
        "print(tuple(m(torch.randn(2, 1, 8, 8)).shape))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "int8.pt")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(2, 10)"


def test_cli_qad_config_fits_reloads_without_arguments_and_writes_int8(in_project_copy):
    cli = build_cli(["fit", "--config", str(CONFIGS / "digits/qad.yaml"), *TINY_CLI, "--test_after_fit=false"])
    path = cli.trainer.checkpoint_callback.best_model_path
    restored = OfflineDistillation.load_from_checkpoint(path)  # rebuilt from the saved config, strict
    expected = torch.load(path, weights_only=True)["state_dict"]
    assert isinstance(restored.student, QuantizedNetwork)
    for key, value in restored.student.state_dict().items():
        assert torch.equal(value, expected[f"student.{key}"])
    assert (in_project_copy / "runs/digits/qad/student_int8.pt").is_file()


def test_cifar_resnet_copy_quantizes_its_residual_sums():
    student = quantized_copy(resnet8(num_classes=10))
    blocks = [m for m in student.modules() if isinstance(m, QuantizableBasicBlock)]
    assert len(blocks) == 3 and isinstance(student.network.conv1, intrinsic_qat.ConvBnReLU2d)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        student(x)
        fake = student.eval()(x)
    int8 = convert_quantized(student)
    with torch.no_grad(), int8_runtime():
        real = int8(x)
    assert type(int8.network.layer2[0].conv1) is intrinsic_quantized.ConvReLU2d
    step = student.network.fc.activation_post_process.scale.item()
    assert ((real - fake).abs() <= 2 * step + 1e-6).float().mean() >= 0.99


def test_works_after_a_deterministic_fit_turned_the_check_on():
    torch.use_deterministic_algorithms(True)
    try:
        student = quantized_copy(DigitsCNN(width=8))  # its conversion check runs int8 kernels
        student(torch.randn(8, 1, 8, 8))  # activation ranges
        with int8_runtime():
            assert not torch.are_deterministic_algorithms_enabled()
            convert_quantized(student)(torch.randn(2, 1, 8, 8))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_qat_baseline_is_baseline_yaml_with_qads_student_and_budget():
    """The student alone of qad.yaml: plain QAT with qad's copy and budget (what the accuracy benchmark runs as
    baseline.yaml with the budget overrides of qad.yaml)."""
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", ROOT / "benchmarks" / "accuracy.py")
    accuracy = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = accuracy
    spec.loader.exec_module(accuracy)
    alone, qad = (yaml.safe_load((CONFIGS / "digits" / name).read_text()) for name in ("qat_baseline.yaml", "qad.yaml"))
    assert alone["model"]["init_args"]["network"] == qad["model"]["init_args"]["student"]
    budget = dict(argument.removeprefix("--").split("=", 1) for argument in accuracy.budget_arguments("qad.yaml"))
    assert int(budget["trainer.max_epochs"]) == alone["trainer"]["max_epochs"] == qad["trainer"]["max_epochs"]
    for key in ("optimizer", "lr_scheduler"):
        assert yaml.safe_load(budget[f"model.init_args.{key}"]) == alone["model"]["init_args"][key]
        assert alone["model"]["init_args"][key] == qad["model"]["init_args"][key]
    assert alone["data"] == qad["data"]


def test_unsupported_networks_and_misuse_are_clear_errors(tmp_path):
    timm_resnet = timm_model("resnet18", num_classes=10, model_args={"channels": (8, 16, 32, 64)})
    with pytest.raises(ValueError, match=r"ResNet does not run in int8 once converted \(Could not run 'aten::add"):
        quantized_copy(timm_resnet)
    with pytest.raises(ValueError, match=r"expected backend one of x86, fbgemm, qnnpack, onednn but got 'arm'"):
        quantized_copy(DigitsCNN(width=8), backend="arm")
    with pytest.raises(TypeError, match=r"convert_quantized: expected a fake-quantized network .* but got DigitsCNN"):
        convert_quantized(DigitsCNN(width=8))
    student = quantized_copy(DigitsCNN(width=8))
    with pytest.raises(TypeError, match=r"save_quantized: expected the int8 network convert_quantized returns"):
        save_quantized(student, tmp_path / "x.pt")
    module = Classifier(network=DigitsCNN(width=8))
    trainer = fast_trainer(tmp_path, callbacks=[ConvertQuantized(str(tmp_path / "int8.pt"))])
    with pytest.raises(ValueError, match=r"ConvertQuantized: expected a fake-quantized student .* but got DigitsCNN"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 0


def test_nothing_is_written_after_a_smoke_test(tmp_path):
    module = Classifier(network=quantized_copy(DigitsCNN(width=8)))
    trainer = L.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ConvertQuantized(str(tmp_path / "int8.pt"))],
        default_root_dir=tmp_path,
    )
    with pytest.warns(UserWarning, match=r"ConvertQuantized: not writing .*fast_dev_run"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    assert not (tmp_path / "int8.pt").exists()
