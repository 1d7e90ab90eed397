"""``kd-lightning-export`` and ``ExportStudent``: the deployable student as safetensors, TorchScript and ONNX.

The checkpoints come from real (tiny) ``kd-lightning fit`` runs of the digits configs; every exported file is loaded
back the way a deployment would and compared with the PyTorch student on real digits batches of several sizes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import onnxruntime
import pytest
import torch
from helpers import CONFIGS, ROOT, TEACHER_WEIGHTS, fast_trainer, tiny_fit
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from kd_lightning import Classifier, DigitsCNN, DigitsDataModule, DigitsMLP, TinyCNN, export_formats
from kd_lightning.callbacks.export import ExportStudent
from kd_lightning.cli import main as fit_main
from kd_lightning.export.formats import export_network, onnx_metadata, to_torchscript
from kd_lightning.models import MobileNetV2, ShuffleV2, resnet8x4, vgg8, wrn_16_2
from kd_lightning.modules import OfflineDistillation, OnlineDistillation, SelfDistillation

SHORT = tiny_fit(max_steps=3)
RUNS = ("offline_kd", "online_kd", "self_ema", "self_byot")
BATCH_SIZES = (1, 5, 64)
ONNX_TOLERANCE, TORCHSCRIPT_TOLERANCE = 1e-4, 1e-6
MAX_LINES = 15
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


class BesselMLP(DigitsMLP):
    """A digits student ending in an operator that ONNX cannot translate (``torch.special.i0e``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0e(self.head(self.layer1(self.flatten(x))))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``last.ckpt`` of a 3-step ``kd-lightning fit`` of each digits config (and of a BesselMLP baseline)."""
    project = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "checkpoints", project / "checkpoints")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {name: ["--config", str(CONFIGS / "digits" / f"{name}.yaml")] for name in RUNS}
    runs["bessel"] = [
        "--config",
        str(CONFIGS / "digits" / "baseline.yaml"),
        "--model.init_args.network=export.test_export.BesselMLP",
        "--trainer.default_root_dir=runs/digits/bessel",
        "--trainer.logger.init_args.save_dir=runs/digits/bessel",
    ]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(project)
            patch.setattr(sys, "argv", ["kd-lightning"])
            for args in runs.values():
                fit_main(["fit", *args, *SHORT])
    finally:
        torch.set_num_threads(threads)
    return {name: next((project / "runs" / "digits" / name).rglob("last.ckpt")) for name in runs}


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Real inputs: the digits test split ``[N, 1, 8, 8]``."""
    data = DigitsDataModule(seed=0)
    data.setup("test")
    return torch.cat([batch[0] for batch in data.test_dataloader()])


def reference(name: str, path: Path, layer: str | None):
    """The PyTorch network the files must reproduce: the student's logits, or the exit's inside the full network."""
    if name == "offline_kd":
        module = OfflineDistillation.load_from_checkpoint(path, teacher_weights=str(TEACHER_WEIGHTS))
    else:
        module = {"online_kd": OnlineDistillation}.get(name, SelfDistillation).load_from_checkpoint(path)
    module.eval()
    if layer is None:
        return module, lambda x: module(x)
    return module, lambda x: module.exit_logits(x)[layer]


def onnx_logits(path: Path, inputs: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    return torch.from_numpy(output)


def hashes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


# ----------------------------------------------------------------- every mode's student, reloaded in every format
@pytest.mark.parametrize(
    ("name", "layer", "network"),
    [
        ("offline_kd", None, "DigitsMLP"),
        ("online_kd", None, "DigitsMLP"),
        ("self_ema", None, "DigitsMLP"),
        ("self_byot", None, "DigitsCNN"),
        ("self_byot", "layer2", "DigitsCNN cut at exit layer2"),
    ],
)
def test_exported_files_reproduce_the_student(run_export, checkpoints, digits, tmp_path, name, layer, network):
    code, out, err = run_export(checkpoints[name], "--output", tmp_path, *(["--exit", layer] if layer else []))
    assert code == 0, err
    stem = "student" if layer is None else f"exit_{layer}"
    files = {
        fmt: tmp_path / f"{stem}{suffix}"
        for fmt, suffix in [("safetensors", ".safetensors"), ("torchscript", ".torchscript.pt"), ("onnx", ".onnx")]
    }
    listed = sorted([*(path.name for path in files.values()), f"{stem}.preprocessing.json"])
    assert sorted(path.name for path in tmp_path.iterdir()) == listed
    module_class = {
        "offline_kd": "OfflineDistillation",
        "online_kd": "OnlineDistillation",
        "self_byot": "LayerwiseSelfDistillation",
    }.get(name, "TemporalSelfDistillation")
    assert f"exported {network} (the student of {module_class}," in out
    assert "checked against PyTorch on a test batch of DigitsDataModule [64, 1, 8, 8] and on a batch of 1" in out
    for path in files.values():
        assert path.name in out
    assert out.count("max abs diff") == 3 and "torch.jit.script" in out and "checked with onnxruntime" in out

    module, expected = reference(name, checkpoints[name], layer)
    scripted = torch.jit.load(str(files["torchscript"]))
    weights = load_file(str(files["safetensors"]))
    if layer is None:
        rebuilt = DigitsMLP(hidden=(32,)) if network == "DigitsMLP" else DigitsCNN(width=8)
        rebuilt.load_state_dict(weights, strict=True)
        rebuilt.eval()
    else:
        cut = module.exit_model(layer, digits[:8])
        assert weights.keys() == cut.state_dict().keys()
        assert all(torch.equal(weights[key], value) for key, value in cut.state_dict().items())
        rebuilt = cut
    worst = {"onnx": 0.0, "torchscript": 0.0}
    for size in BATCH_SIZES:
        inputs = digits[:size]
        with torch.no_grad():
            logits = expected(inputs)
            assert torch.allclose(rebuilt(inputs), logits, atol=1e-6)
            worst["torchscript"] = max(worst["torchscript"], float((scripted(inputs) - logits).abs().max()))
        worst["onnx"] = max(worst["onnx"], float((onnx_logits(files["onnx"], inputs) - logits).abs().max()))
    assert worst["torchscript"] <= TORCHSCRIPT_TOLERANCE and worst["onnx"] <= ONNX_TOLERANCE, worst


def test_existing_files_are_replaced_only_with_overwrite(run_export, checkpoints, tmp_path):
    assert run_export(checkpoints["offline_kd"], "--output", tmp_path, "--formats", "safetensors", "onnx")[0] == 0
    before = hashes(tmp_path)
    code, out, err = run_export(checkpoints["self_ema"], "--output", tmp_path)
    assert code == 2 and not out
    assert "refusing to replace the files of an earlier export" in err and "student.safetensors (" in err
    assert "pass --overwrite" in err and "Traceback" not in err
    assert hashes(tmp_path) == before, "a refused export wrote nothing"
    code, out, err = run_export(checkpoints["self_ema"], "--output", tmp_path, "--overwrite")
    assert code == 0, err
    assert f"replacing {tmp_path / 'student.onnx'} (" in out and "exported DigitsMLP" in out
    after = hashes(tmp_path)
    assert after.keys() == {f"student.{end}" for end in ("safetensors", "torchscript.pt", "onnx", "preprocessing.json")}
    assert after["student.safetensors"] != before["student.safetensors"], "replaced by the other run's student"


def test_no_overwrite_replaces_a_file_the_run_reads_or_a_file_of_another_kind(
    run_export, checkpoints, tmp_path, monkeypatch
):
    generation = tmp_path / "generation1"  # born-again: the previous generation's export is this run's teacher
    generation.mkdir()
    shutil.copy(TEACHER_WEIGHTS, generation / "student.safetensors")
    monkeypatch.chdir(tmp_path)
    fit_main(
        [
            "fit",
            "--config",
            str(CONFIGS / "digits" / "offline_kd.yaml"),
            f"--model.init_args.teacher_weights={generation / 'student.safetensors'}",
            *tiny_fit(max_steps=3, default_root_dir=str(tmp_path / "run"), logger=False),
        ]
    )
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    before = hashes(generation)
    code, out, err = run_export(checkpoint, "--output", generation, "--overwrite")
    assert code == 2 and not out and "Traceback" not in err
    assert f"--output ({generation / 'student.safetensors'}) is the teacher weights of the run" in err, err
    assert "set --output to another folder" in err
    assert hashes(generation) == before, "nothing written"

    other = tmp_path / "other"
    other.mkdir()
    (other / "student.torchscript.pt").write_text("notes, not a network")
    code, out, err = run_export(checkpoint, "--output", other, "--overwrite", "--formats", "safetensors", "torchscript")
    assert code == 2 and "already exists and is not a TorchScript file" in err, err
    assert not (other / "student.safetensors").exists() and (other / "student.torchscript.pt").read_text()

    assert run_export(checkpoints["self_byot"], "--output", other, "--formats", "safetensors")[0] == 0
    before = hashes(other)
    code, out, err = run_export(checkpoint, "--output", other, "--overwrite", "--formats", "safetensors")
    assert code == 2 and "holds the weights of another architecture" in err, err
    assert hashes(other) == before


def test_the_default_folder_is_named_after_the_checkpoint(run_export, checkpoints):
    path = checkpoints["online_kd"]
    code, out, err = run_export(path, "--formats", "torchscript")
    assert code == 0, err
    folder = path.with_name("last_export")
    assert sorted(p.name for p in folder.iterdir()) == ["student.preprocessing.json", "student.torchscript.pt"]
    assert f"into {folder}/" in out
    shutil.rmtree(folder)


def test_an_older_opset_comes_from_the_torchscript_based_exporter(run_export, checkpoints, digits, tmp_path):
    path = checkpoints["offline_kd"]
    code, out, err = run_export(path, "--output", tmp_path, "--formats", "onnx", "--opset", "13")
    assert code == 0, err
    assert "(TorchScript-based exporter, opset 13, checked with onnxruntime)" in out
    _, expected = reference("offline_kd", path, None)
    for size in BATCH_SIZES:
        with torch.no_grad():
            logits = expected(digits[:size])
        assert (onnx_logits(tmp_path / "student.onnx", digits[:size]) - logits).abs().max() <= ONNX_TOLERANCE


def test_input_shape_gives_random_inputs_of_that_shape(run_export, checkpoints, tmp_path):
    code, out, err = run_export(checkpoints["self_byot"], "--output", tmp_path, "--input-shape", "1,8,8")
    assert code == 0, err
    assert "checked against PyTorch on random inputs (--input-shape 1,8,8) [8, 1, 8, 8]" in out


# ----------------------------------------------------------------- bad inputs: one message, exit code, no traceback
def python_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint of a Classifier built and trained from Python: its network is not in its hyperparameters."""
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(Classifier(DigitsMLP(hidden=(8,))), datamodule=DigitsDataModule(batch_size=16))
    trainer.save_checkpoint(tmp_path / "python.ckpt")
    return tmp_path / "python.ckpt"


def foreign_checkpoint(tmp_path: Path) -> Path:
    torch.save({"state_dict": {"layer.weight": torch.ones(2, 2)}, "epoch": 0}, tmp_path / "foreign.ckpt")
    return tmp_path / "foreign.ckpt"


def corrupt_checkpoint(tmp_path: Path) -> Path:
    (tmp_path / "corrupt.ckpt").write_bytes(bytes(range(256)) * 4)
    return tmp_path / "corrupt.ckpt"


def truncated_checkpoint(tmp_path: Path, path: Path) -> Path:
    content = path.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(content[: len(content) // 2])
    return tmp_path / "truncated.ckpt"


BAD_INPUTS = {
    "missing checkpoint": (
        lambda ckpts, tmp: [tmp / "nowhere.ckpt"],
        2,
        ["checkpoint", "nowhere.ckpt", "not found"],
    ),
    "corrupt checkpoint": (lambda ckpts, tmp: [corrupt_checkpoint(tmp)], 2, ["corrupt.ckpt", "is corrupt"]),
    "truncated checkpoint": (
        lambda ckpts, tmp: [truncated_checkpoint(tmp, ckpts["offline_kd"])],
        2,
        ["truncated.ckpt", "is truncated", "another checkpoint of the run"],
    ),
    "not a kd_lightning module": (
        lambda ckpts, tmp: [foreign_checkpoint(tmp)],
        2,
        ["expected a checkpoint of a kd_lightning module", "records no module class", "kd-lightning fit"],
    ),
    "saved from Python without its networks": (
        lambda ckpts, tmp: [python_checkpoint(tmp)],
        2,
        [
            "cannot rebuild Classifier",
            "hold no network",
            "Classifier.load_from_checkpoint(path, network=...)",
            "export_module",
            "kd-lightning fit",
        ],
    ),
    "--exit on a module without exits": (
        lambda ckpts, tmp: [ckpts["self_ema"], "--exit", "layer1"],
        2,
        ["TemporalSelfDistillation has none", "BYOTExits", "without --exit"],
    ),
    "unknown exit": (
        lambda ckpts, tmp: [ckpts["self_byot"], "--exit", "layer9"],
        2,
        ["['layer1', 'layer2']", "but got 'layer9'", "did you mean 'layer2'"],
    ),
    "input shape that does not fit": (
        lambda ckpts, tmp: [ckpts["offline_kd"], "--input-shape", "3,8,8"],
        2,
        ["DigitsMLP does not accept", "[8, 3, 8, 8]", "--input-shape", "1,8,8"],
    ),
    "malformed input shape": (
        lambda ckpts, tmp: [ckpts["offline_kd"], "--input-shape", "1,eight,8"],
        2,
        ["argument --input-shape", "'1,eight,8'", "kd-lightning-export --help"],
    ),
    "a Hugging Face folder of an image student": (
        lambda ckpts, tmp: [ckpts["offline_kd"], "--formats", "hf", "onnx"],
        2,
        ["--formats hf writes a folder of a transformers language model", "DigitsMLP", "--formats onnx safetensors"],
    ),
    "unknown format": (
        lambda ckpts, tmp: [ckpts["offline_kd"], "--formats", "tflite"],
        2,
        ["argument --formats: invalid choice: 'tflite'"],
    ),
    "opset the exporters cannot write": (
        lambda ckpts, tmp: [ckpts["online_kd"], "--formats", "onnx", "--opset", "99"],
        1,
        ["cannot export DigitsMLP to ONNX at opset 99", "wrote opset 18 instead", "pass another --opset"],
    ),
    "operator without ONNX translation": (
        lambda ckpts, tmp: [ckpts["bessel"]],
        1,
        [
            "cannot export BesselMLP to ONNX",
            "bessel_i0e",
            "no ONNX translation",
            "--formats safetensors torchscript",
            "higher --opset",
        ],
    ),
}


@pytest.mark.parametrize("mistake", list(BAD_INPUTS))
def test_bad_inputs_give_one_message(run_export, checkpoints, tmp_path, mistake):
    make_args, expected_code, words = BAD_INPUTS[mistake]
    output = tmp_path / "out"
    code, _, err = run_export(*make_args(checkpoints, tmp_path), "--output", output)
    assert code == expected_code, err
    assert err.startswith("kd-lightning-export: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) <= MAX_LINES
    for word in words:
        assert word in err, f"{word!r} not in {err}"
    if mistake == "operator without ONNX translation":  # the formats before ONNX were written and checked
        assert sorted(p.name for p in output.iterdir()) == ["student.safetensors", "student.torchscript.pt"]
    else:
        assert not output.exists() or not any(output.iterdir()), "a refused or failed export writes nothing"


def test_debug_adds_the_traceback(run_export, checkpoints, tmp_path):
    code, _, err = run_export(checkpoints["self_byot"], "--exit", "layer9", "--output", tmp_path, "--debug")
    assert code == 2 and "Traceback" in err and "kd-lightning-export: error: expected exit" in err


# ----------------------------------------------------------------- ExportStudent
class TinyRegressor(L.LightningModule):
    """A module with a ``student`` and a training step, for a fit that makes no step."""

    def __init__(self) -> None:
        super().__init__()
        self.student = torch.nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        inputs, target = batch
        return torch.nn.functional.mse_loss(self.student(inputs), target)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4), torch.randn(8, 2)), batch_size=4)


def test_export_student_writes_checked_files_after_a_fit(tmp_path, digits, one_torch_thread):
    module = Classifier(DigitsMLP(hidden=(16,)))
    trainer = fast_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[ExportStudent(str(tmp_path / "x"))])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    folder = tmp_path / "x"
    assert sorted(p.name for p in folder.iterdir()) == [
        "student.onnx",
        "student.preprocessing.json",
        "student.safetensors",
        "student.torchscript.pt",
    ]
    module.eval()
    inputs = digits[:7]
    with torch.no_grad():
        logits = module(inputs)
        assert (torch.jit.load(str(folder / "student.torchscript.pt"))(inputs) - logits).abs().max() <= 1e-6
    assert (onnx_logits(folder / "student.onnx", inputs) - logits).abs().max() <= ONNX_TOLERANCE
    rebuilt = DigitsMLP(hidden=(16,)).eval()
    rebuilt.load_state_dict(load_file(str(folder / "student.safetensors")))
    assert torch.equal(rebuilt(inputs), logits)


def test_export_student_defaults_to_the_log_dir(tmp_path, one_torch_thread):
    callback = ExportStudent(formats=["safetensors"])
    logger = CSVLogger(tmp_path, name="run")
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0, logger=logger, callbacks=[callback])
    trainer.fit(Classifier(TinyCNN(width=2)), datamodule=DigitsDataModule(batch_size=16))
    names = sorted(p.name for p in (Path(trainer.log_dir) / "export").iterdir())
    assert names == ["student.preprocessing.json", "student.safetensors"]


def test_export_student_writes_nothing_after_a_fit_without_a_step(tmp_path):
    with pytest.warns(UserWarning, match="ExportStudent: not exporting to .*expected the fit to make at least one"):
        trainer = fast_trainer(
            tmp_path, max_epochs=0, limit_val_batches=0, callbacks=[ExportStudent(str(tmp_path / "x"))]
        )
        trainer.fit(TinyRegressor())
    assert not (tmp_path / "x").exists()


def test_export_student_checks_its_formats():
    with pytest.raises(ValueError, match=r"expected formats from \['safetensors', 'torchscript', 'onnx', 'hf', "):
        ExportStudent(formats=["tflite"])


# ----------------------------------------------------------------- TorchScript of the library's networks
@pytest.mark.parametrize("network", [DigitsMLP(hidden=(32, 16)), DigitsCNN(width=4), TinyCNN(width=4)], ids=type)
def test_digits_networks_script_with_unchanged_keys(network, one_torch_thread):
    network.eval()
    keys = list(network.state_dict())
    scripted = torch.jit.script(network)
    inputs = torch.randn(3, 1, 8, 8)
    assert torch.equal(scripted(inputs), network(inputs))
    assert list(scripted.state_dict()) == keys
    if isinstance(network, DigitsMLP):
        assert keys == [
            "layer1.0.weight",
            "layer1.0.bias",
            "layer2.0.weight",
            "layer2.0.bias",
            "head.weight",
            "head.bias",
        ]
        assert [name for name, _ in network.named_children()] == ["flatten", "layer1", "layer2", "head"]


@pytest.mark.parametrize(
    ("build", "how"),
    [(resnet8x4, "script"), (wrn_16_2, "script"), (vgg8, "script"), (ShuffleV2, "script"), (MobileNetV2, "script")],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_cifar_networks_script_or_trace(build, how, one_torch_thread):
    network = build(num_classes=10).eval()
    inputs = torch.randn(2, 3, 32, 32)
    messages: list[str] = []
    compiled, made = to_torchscript(network, inputs, log=messages.append)
    assert made.startswith(f"torch.jit.{how}") and not messages
    with torch.no_grad():
        assert torch.allclose(compiled(inputs), network(inputs), atol=1e-5)


class NamedStages(torch.nn.Module):
    """A forward that looks its stages up by computed names: torch.jit.script cannot compile it."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1, self.stage2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

    def forward(self, x):
        for index in (1, 2):
            x = getattr(self, f"stage{index}")(x)
        return x


def test_a_network_torchscript_cannot_compile_is_traced_and_says_so(one_torch_thread):
    network, inputs = NamedStages().eval(), torch.randn(2, 4)
    messages: list[str] = []
    compiled, made = to_torchscript(network, inputs, log=messages.append)
    assert made.startswith("torch.jit.trace")
    assert "torch.jit.script cannot compile NamedStages" in messages[0] and "traced it" in messages[0]
    with torch.no_grad():
        assert torch.allclose(compiled(inputs), network(inputs), atol=1e-6)


def test_export_network_from_python(tmp_path, digits, one_torch_thread):
    network = TinyCNN(width=2).eval()
    files = export_network(network, tmp_path, digits[:4], formats=["onnx"], name="tiny")
    assert [(file.format, file.path.name) for file in files] == [("onnx", "tiny.onnx")]
    assert files[0].max_abs_diff <= ONNX_TOLERANCE and "onnxruntime" in files[0].how
    with torch.no_grad():
        assert (onnx_logits(files[0].path, digits[:9]) - network(digits[:9])).abs().max() <= ONNX_TOLERANCE


def test_a_file_that_fails_its_check_replaces_nothing(tmp_path, digits, monkeypatch, one_torch_thread):
    network = TinyCNN(width=2).eval()
    export_network(network, tmp_path, digits[:4], formats=["onnx", "torchscript"])
    before = hashes(tmp_path)
    monkeypatch.setitem(export_formats.TOLERANCE, "onnx", -1.0)  # no file can pass
    with pytest.raises(ValueError, match="the exported onnx file does not reproduce the network.*it was not written"):
        export_network(TinyCNN(width=2).eval(), tmp_path, digits[:4], formats=["onnx"])
    assert hashes(tmp_path) == before, "the earlier file is left as it was, and no temporary file is left behind"


def test_onnx_without_its_packages_names_them(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(export_formats, "ONNX_PACKAGES", ("onnx", "no_such_package_kd"))
    with pytest.raises(
        ValueError,
        match=r"needs the packages onnx, no_such_package_kd but these are not installed: no_such_package_kd; pip",
    ):
        export_network(TinyCNN(width=2).eval(), tmp_path, digits[:4], formats=["safetensors", "onnx"])
    assert not tmp_path.joinpath("student.safetensors").exists(), "checked before any file is written"


# ----------------------------------------------------------------- the preprocessing travels with the export
def test_the_exported_digits_network_classifies_raw_pixels_with_its_sidecar(tmp_path, one_torch_thread):
    """A deployer reads the sidecar, normalises raw 0-16 pixels with it and gets the classes the teacher gets."""
    network = DigitsCNN(num_classes=10, width=32)
    network.load_state_dict(load_file(str(TEACHER_WEIGHTS)))
    module = Classifier(network, optimizer=functools.partial(torch.optim.SGD, lr=1e-6))
    callback = ExportStudent(str(tmp_path / "x"), formats=["onnx"])
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    info = json.loads((tmp_path / "x" / "student.preprocessing.json").read_text())
    assert info["input"]["shape"] == ["batch", 1, 8, 8] and info["classes"] == list("0123456789")
    metadata = onnx_metadata(tmp_path / "x" / "student.onnx")
    assert json.loads(metadata["kd_lightning.preprocessing"]) == info
    assert json.loads(metadata["mean"]) == info["normalization"]["mean"]

    raw = load_digits()
    pixels = torch.from_numpy(raw.images.astype(np.float32))[:, None]  # [N, 1, 8, 8], 0-16
    norm = info["normalization"]
    mean, std = torch.tensor(norm["mean"]).view(1, -1, 1, 1), torch.tensor(norm["std"]).view(1, -1, 1, 1)
    inputs = (pixels * norm["scale"] - mean) / std
    classes = [info["classes"][i] for i in onnx_logits(tmp_path / "x" / "student.onnx", inputs).argmax(1)]
    accuracy = np.mean([label == str(target) for label, target in zip(classes, raw.target, strict=True)])
    unnormalised = np.mean(onnx_logits(tmp_path / "x" / "student.onnx", pixels).argmax(1).numpy() == raw.target)
    assert accuracy >= 0.97 and unnormalised < accuracy - 0.2, (accuracy, unnormalised)


def test_the_export_takes_the_best_checkpoint_unless_told_otherwise(run_export, checkpoints, tmp_path):
    path = checkpoints["offline_kd"]
    best = next(path.parent.glob("epoch=*.ckpt"), None)
    code, out, err = run_export(path, "--output", tmp_path / "a", "--formats", "safetensors")
    assert code == 0, err
    if best is not None:
        assert f"from {best}, the best checkpoint, val/" in out and "--no-best exports last.ckpt itself" in out
    code, out, err = run_export(path, "--output", tmp_path / "b", "--formats", "safetensors", "--no-best")
    assert code == 0 and f"from {path} (as given: --no-best)" in out, err
    info = json.loads((tmp_path / "b" / "student.preprocessing.json").read_text())
    assert info["datamodule"] == "DigitsDataModule" and len(info["normalization"]["mean"]) == 1


def test_export_student_refuses_a_hugging_face_folder_of_an_image_student_before_the_fit(tmp_path):
    callback = ExportStudent(str(tmp_path / "x"), formats=["hf"])
    trainer = fast_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[callback])
    with pytest.raises(ValueError, match=r"formats \['hf'\] write folders of a transformers language model"):
        trainer.fit(Classifier(TinyCNN(width=2)), datamodule=DigitsDataModule(batch_size=16))
    assert trainer.global_step == 0 and not (tmp_path / "x").exists()
