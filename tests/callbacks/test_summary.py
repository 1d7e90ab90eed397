"""The model summary without an empty FLOPs column (``CompactModelSummary``), and a default ``kd-lightning`` run
without lines its user cannot act on."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
from helpers import CONFIGS, fast_trainer_kwargs
from lightning.pytorch.callbacks import ModelSummary

from kd_lightning import Classifier, CompactModelSummary, DigitsDataModule, DigitsMLP
from kd_lightning.cli import build_cli


def summary_text(tmp_path, caplog, module: L.LightningModule) -> str:
    trainer = L.Trainer(
        **{**fast_trainer_kwargs(tmp_path, max_steps=1), "enable_model_summary": True},
        callbacks=[CompactModelSummary()],
    )
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.callbacks.model_summary"):
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    return "\n".join(record.getMessage() for record in caplog.records if "Total params" in record.getMessage())


def test_the_flops_column_is_left_out_when_nothing_was_counted(tmp_path, caplog, one_torch_thread):
    text = summary_text(tmp_path, caplog, Classifier(DigitsMLP()))
    assert "Trainable params" in text and "student" in text and "DigitsMLP" in text
    assert "FLOPs" not in text and "Flops" not in text


def test_counted_flops_are_shown_as_lightning_shows_them(tmp_path, caplog, one_torch_thread):
    module = Classifier(DigitsMLP())
    module.example_input_array = torch.zeros(2, 1, 8, 8)  # Lightning counts FLOPs on it
    text = summary_text(tmp_path, caplog, module)
    assert "FLOPs" in text and "Total Flops" in text


def test_the_command_replaces_lightnings_default_summary_with_the_same_depth(in_project_copy):
    cli = build_cli(["--config", str(CONFIGS / "digits/offline_kd.yaml"), "--trainer.max_steps=1"], run=False)
    summaries = [callback for callback in cli.trainer.callbacks if isinstance(callback, ModelSummary)]
    assert [type(summary) for summary in summaries] == [CompactModelSummary]
    assert summaries[0].rich and summaries[0]._max_depth == 1  # Lightning's default is rich when rich is installed


def test_a_summary_the_config_chose_is_kept(in_project_copy):
    chosen = "--trainer.callbacks+={class_path: lightning.pytorch.callbacks.ModelSummary, init_args: {max_depth: 2}}"
    cli = build_cli(["--config", str(CONFIGS / "digits/offline_kd.yaml"), chosen], run=False)
    summaries = [callback for callback in cli.trainer.callbacks if isinstance(callback, ModelSummary)]
    assert [type(summary) for summary in summaries] == [ModelSummary] and summaries[0]._max_depth == 2


@pytest.mark.slow  # a subprocess: the command as a user runs it, its output as they see it
def test_a_default_digits_run_prints_nothing_its_user_cannot_act_on(in_project_copy):
    command = [sys.executable, "-m", "kd_lightning.cli", "fit", "--config", str(CONFIGS / "digits/offline_kd.yaml")]
    command += ["--trainer.max_epochs=2"]
    env = {**os.environ, "COLUMNS": "120"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "kd_lightning report" in result.stdout and "Trainable params" in result.stdout
    unwanted = ["Tip:", "litlogger", "LeafSpec", "log_every_n_steps", "FLOPs", "Warning", "warn"]
    assert not [word for word in unwanted if word in output], output[-3000:]
