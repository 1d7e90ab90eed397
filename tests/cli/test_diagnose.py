"""The CLI's one error boundary: realistic mistakes give one short block with the problem, the place and the fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from argparse import ArgumentError
from pathlib import Path

import pytest
from helpers import CONFIGS, tiny_fit

from kd_lightning.cli import command as cli
from kd_lightning.cli.diagnose import DEBUG_ENV, Diagnosis, describe_parse_error, nearest_import_path
from kd_lightning.modules import DistillationModule

TINY = tiny_fit(logger=False)
MAX_LINES = 15


def edited(config: str, *replacements: tuple[str, str], name: str = "bad.yaml") -> str:
    """Copy ``configs/<config>`` into the working directory as ``name`` with each ``(old, new)`` replaced once."""
    text = (CONFIGS / config).read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    Path(name).write_text(text)
    return name


def run_main(args: list[str], capsys, monkeypatch, debug: bool = False) -> tuple[int, str]:
    """``kd_lightning.cli.command.main(args)`` in-process: its exit code and stderr."""
    monkeypatch.setattr(sys, "argv", ["kd-lightning"])
    if debug:
        monkeypatch.setenv(DEBUG_ENV, "1")
    else:
        monkeypatch.delenv(DEBUG_ENV, raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    return stop.value.code, capsys.readouterr().err


def offline(*replacements: tuple[str, str]) -> list[str]:
    return ["fit", "--config", edited("digits/offline_kd.yaml", *replacements), *TINY]


def attention(*replacements: tuple[str, str]) -> list[str]:
    return ["fit", "--config", edited("digits/at.yaml", *replacements), *TINY]


BYOT_EXITS = (
    "    exits:\n      class_path: kd_lightning.BYOTExits\n      init_args:\n"
    "        layers: [layer1, layer2]\n        feature_layer: pool\n        alpha: 0.1\n        temperature: 3.0\n"
    "        hint_weight: 0.00013\n"
)


def assert_one_short_block(code: int, err: str, expected_code: int, needles: list[str], once: str) -> None:
    block = err[err.index("kd-lightning: error:") :]
    assert code == expected_code, err
    assert "Traceback" not in err, err
    assert len(block.splitlines()) <= MAX_LINES, block
    assert err.count("kd-lightning: error:") == 1 and err.count(once) == 1, err
    assert f"set {DEBUG_ENV}=1" in block
    for needle in needles:
        assert needle in block, f"{needle!r} not in\n{block}"


def test_the_debug_flag_is_stripped_and_shows_the_traceback(in_project_copy, capsys, monkeypatch):
    code, err = run_main([*offline(("weight: 0.9", "weight: -1")), "--debug"], capsys, monkeypatch)
    assert code == 2 and "Traceback (most recent call last)" in err and "weight >= 0" in err
    assert f"set {DEBUG_ENV}=1" not in err


@pytest.mark.slow
def test_the_console_script_prints_a_short_block_as_a_subprocess(in_project_copy):
    config = edited("digits/offline_kd.yaml", ("temperature: 4.0", "temperature: -4.0"))
    command = [sys.executable, "-m", "kd_lightning.cli", "fit", "--config", config, *TINY]
    env = {key: value for key, value in os.environ.items() if key != DEBUG_ENV}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) <= MAX_LINES and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("temperature > 0") == 1
    assert "where: model.init_args.terms[0].init_args.loss.init_args.temperature (bad.yaml)" in result.stderr


def test_an_error_inside_torch_names_its_type_and_the_last_frame_of_ours(in_project_copy, capsys, monkeypatch):
    code, err = run_main(offline(("lr: 0.01", "lr: -0.01")), capsys, monkeypatch)
    assert code == 1 and "ValueError: Invalid learning rate: -0.01" in err, err
    assert "at:    kd_lightning/" in err and "Traceback" not in err
    assert "where: model.init_args.optimizer.init_args.lr (bad.yaml)" in err


def test_help_still_exits_zero(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["kd-lightning"])
    with pytest.raises(SystemExit) as stop:
        cli.main(["fit", "--help"])
    assert stop.value.code == 0 and "--trainer.max_epochs" in capsys.readouterr().out


def test_ctrl_c_before_training_exits_130_with_one_line(capsys, monkeypatch):
    def interrupted(args=None, run=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_cli", interrupted)
    code, err = run_main(["fit"], capsys, monkeypatch)
    assert code == 130 and err.strip() == "kd-lightning: interrupted (Ctrl-C); stopped."


def test_ctrl_c_during_fit_exits_130_with_one_line(in_project_copy, capsys, monkeypatch):
    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(DistillationModule, "training_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    try:
        code, err = run_main(offline(), capsys, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    assert code == 130 and err.strip().splitlines()[-1] == "kd-lightning: interrupted (Ctrl-C); stopped."
    assert "Traceback" not in err


def test_build_cli_raises_ordinary_exceptions(in_project_copy, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["kd-lightning"])
    with pytest.raises(ArgumentError, match="File does not exist"):
        cli.build_cli(["fit", "--config", "nope.yaml"])
    with pytest.raises(ValueError, match="temperature > 0"):
        cli.build_cli(
            ["--config", edited("digits/offline_kd.yaml", ("temperature: 4.0", "temperature: -4.0"))], run=False
        )


def test_an_ambiguous_list_item_names_the_candidates():
    message = "\n".join(
        [
            'Parser key "terms":',
            "  Errors:",
            "    - Problem with given class_path 'kd_lightning.DistillTerm':",
            "        Option 'wieght' is not accepted",
            "  Given value: [{'class_path': 'kd_lightning.DistillTerm', 'init_args': {'wieght': 1}}, "
            "{'class_path': 'kd_lightning.DistillTerm', 'init_args': {'wieght': 2}}]",
        ]
    )
    diagnosis = describe_parse_error(message)
    assert diagnosis.where == "terms[0 or 1].init_args.wieght" and diagnosis.exit_code == 2
    assert diagnosis.fix.startswith("did you mean 'weight'?")


def test_nearest_import_path_fixes_each_segment():
    assert nearest_import_path("kd_lightnin.loss.KDLos") == "kd_lightning.losses.KDLoss"
    assert nearest_import_path("kd_lightning.losses.KDLoss") is None
    assert nearest_import_path("kd_lightning.losses.Zzzzzz") is None


def test_a_long_message_is_cut_to_a_short_block():
    block = Diagnosis("\n".join(f"line {i}" for i in range(40)), where="model", fix="do this").render()
    assert len(block.splitlines()) <= MAX_LINES and "more lines" in block
