"""Checkpoints and configs of the previous release (0.1) keep working: they load, export and resume.

``tests/fixtures/release_0_1`` holds ``last.ckpt`` of a 2-step ``kd-lightning fit`` of every digits mode, written by
release 0.1 (its module paths: ``kd_lightning.modules.self_distillation.SelfDistillation``,
``kd_lightning.modules.temporal.EMATeacher``, ...), and the configs that wrote them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import ROOT

from kd_lightning import LayerwiseSelfDistillation, OfflineDistillation, OnlineDistillation, TemporalSelfDistillation
from kd_lightning.cli import main as fit_main
from kd_lightning.cli.export import main as export_main
from kd_lightning.core.moved import current_path
from kd_lightning.export.deploy import load_module
from kd_lightning.files import read_checkpoint

FIXTURES = ROOT / "tests" / "fixtures" / "release_0_1"
MODES = {
    "teacher": "Classifier",
    "offline_kd": OfflineDistillation,
    "fitnets": OfflineDistillation,
    "kd_at_rkd": OfflineDistillation,
    "online_kd": OnlineDistillation,
    "online_dml": OnlineDistillation,
    "self_byot": LayerwiseSelfDistillation,
    "self_ema": TemporalSelfDistillation,
    "self_born_again": TemporalSelfDistillation,
    "self_pskd": TemporalSelfDistillation,
}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--test_after_fit=false"]


def exit_code(main, args: list[str]) -> int:
    """A command's exit code, run in-process (0 when it returns)."""
    try:
        main(args)
    except SystemExit as stop:
        return stop.code or 0
    return 0


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the shipped teacher where the old configs read it."""
    shutil.copytree(ROOT / "checkpoints", tmp_path / "checkpoints")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", MODES)
def test_an_old_checkpoint_loads_into_the_mode_that_replaced_its_class(name, project, one_torch_thread):
    path = FIXTURES / f"{name}.ckpt"
    checkpoint = read_checkpoint(path)
    module = load_module(path, checkpoint)
    expected = MODES[name]
    assert type(module).__name__ == expected if isinstance(expected, str) else type(module) is expected
    saved = {key: value for key, value in checkpoint["state_dict"].items() if not key.startswith("teacher.")}
    state = module.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


def test_old_import_paths_resolve_to_the_moved_code():
    from kd_lightning.cache import TeacherCache
    from kd_lightning.modules.temporal import EMATeacher
    from kd_lightning.teacher import load_weights

    import kd_lightning

    assert TeacherCache is kd_lightning.TeacherCache and EMATeacher is kd_lightning.EMATeacher
    assert load_weights is kd_lightning.load_weights
    from kd_lightning.callbacks.quantize import ConvertQuantized
    from kd_lightning.modules.checks import NonFiniteLossError
    from kd_lightning.teacher import count_parameters, freeze

    assert ConvertQuantized is kd_lightning.ConvertQuantized and NonFiniteLossError is kd_lightning.NonFiniteLossError
    assert freeze is kd_lightning.freeze and count_parameters(kd_lightning.DigitsMLP()) > 0
    with pytest.raises(ImportError, match="cannot import name 'nothing_of_that_name'"):
        from kd_lightning.cache import nothing_of_that_name  # noqa: F401
    assert current_path("kd_lightning.modules.temporal.PSKDTeacher") == "kd_lightning.teachers.temporal.PSKDTeacher"


def test_patching_an_old_module_path_patches_the_code_that_reads_it(monkeypatch):
    import kd_lightning.export.formats as formats
    import kd_lightning.teachers.frozen as frozen
    from kd_lightning import export_formats
    from kd_lightning import teacher as old_teacher

    monkeypatch.setattr(export_formats, "ONNX_PACKAGES", ("no_such_package_kd",))
    assert formats.ONNX_PACKAGES == ("no_such_package_kd",), "set where the code reads it"
    monkeypatch.undo()
    assert formats.ONNX_PACKAGES == ("onnx", "onnxscript", "onnxruntime")
    assert "ONNX_PACKAGES" not in vars(export_formats), "the old path holds no copy"
    holder = old_teacher._holder("freeze")[0]
    assert holder.freeze is old_teacher.freeze and holder is not old_teacher and frozen is not None


@pytest.mark.parametrize("name", ["offline_kd", "self_byot", "online_dml"])
def test_an_old_checkpoint_exports(name, project, one_torch_thread, capsys):
    output = project / "export"
    code = exit_code(export_main, [str(FIXTURES / f"{name}.ckpt"), "--formats", "safetensors", "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    assert (output / "student.safetensors").is_file()


@pytest.mark.parametrize("name", ["fitnets", "self_ema", "self_pskd", "self_byot", "online_kd"])
def test_an_old_run_resumes_from_its_checkpoint_with_its_old_config(name, project, one_torch_thread, capsys):
    checkpoint = project / "old.ckpt"
    shutil.copy(FIXTURES / f"{name}.ckpt", checkpoint)
    root = f"--trainer.default_root_dir={project / 'runs'}"
    logger = f"--trainer.logger.init_args.save_dir={project / 'runs'}"
    args = ["fit", "--config", str(FIXTURES / f"{name}.yaml"), "--trainer.max_steps=3", root, logger, *QUIET]
    assert exit_code(fit_main, [*args, "--trainer.limit_val_batches=1", f"--ckpt_path={checkpoint}"]) == 0, (
        capsys.readouterr().err
    )
    saved = [read_checkpoint(path) for path in (project / "runs").rglob("last.ckpt")]
    assert saved and max(ckpt["global_step"] for ckpt in saved) == 3
