"""The ``kd-lightning`` command: a real subprocess run, and reloading its checkpoints with no arguments."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import CONFIGS, tiny_fit

from kd_lightning import Classifier, OfflineDistillation
from kd_lightning.cli import build_cli

TINY = tiny_fit(limit_train_batches=3, limit_val_batches=2, test_after_fit=True)


@pytest.mark.slow
def test_main_command_runs_as_a_subprocess_and_prints_the_report(in_project_copy):
    command = [sys.executable, "-m", "kd_lightning.cli", "fit", "--config", str(CONFIGS / "digits/offline_kd.yaml")]
    command += [*TINY, "--trainer.limit_test_batches=2", "--report.path=report.json"]
    env = {**os.environ, "COLUMNS": "120"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kd_lightning report" in result.stdout and "agreement with teacher" in result.stdout
    report = json.loads((in_project_copy / "report.json").read_text())
    assert report["teacher_params"] == 103466 and report["student_params"] == 2410
    assert 0 <= report["test/agreement"] <= 1 and report["test/teacher_acc"] > 0.95


def test_cli_checkpoint_reloads_without_arguments(in_project_copy):
    cli = build_cli(["fit", "--config", str(CONFIGS / "digits/offline_kd.yaml"), *TINY, "--test_after_fit=false"])
    path = cli.trainer.checkpoint_callback.last_model_path
    restored = OfflineDistillation.load_from_checkpoint(path)
    expected = torch.load(path, weights_only=True)["state_dict"]
    for key, value in restored.student.state_dict().items():
        assert torch.equal(value, expected[f"student.{key}"])
    assert restored.objective.ce_weight == 0.1 and restored.objective.terms[0].loss.temperature == 4.0


def test_teacher_config_exports_weights_that_distillation_loads(in_project_copy):
    shipped = in_project_copy / "checkpoints" / "digits_teacher.safetensors"
    before = shipped.read_bytes()
    build_cli(["fit", "--config", str(CONFIGS / "digits/teacher.yaml"), *TINY, "--test_after_fit=false"])
    exported = in_project_copy / "runs/digits/teacher/digits_teacher.safetensors"
    assert exported.is_file() and exported.stat().st_size < 1_000_000
    assert shipped.read_bytes() == before, "a run never replaces the shipped teacher unless copy_to asks for it"
    restored = Classifier.load_from_checkpoint(
        in_project_copy / "runs/digits/teacher/lightning_logs/version_0/checkpoints/last.ckpt"
    )
    shutil.copyfile(exported, shipped)  # the install step in the config's header (`cp ... checkpoints/`)
    cli = build_cli(["--config", str(CONFIGS / "digits/offline_kd.yaml")], run=False)
    for key, value in restored.student.state_dict().items():
        assert torch.equal(cli.model.teacher.network.state_dict()[key], value) or "num_batches" in key
