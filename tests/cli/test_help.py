"""The modes forward their shared settings through ``**kwargs``; ``--help`` and ``--print_config`` still list every
parameter of every mode (jsonargparse follows the ``super().__init__(**kwargs)`` call)."""

from __future__ import annotations

import pytest
import yaml
from helpers import CONFIGS

from kd_lightning.cli import main
from kd_lightning.modules.base import SHARED_ARGUMENTS

MODES = {
    "kd_lightning.Classifier": ("digits/baseline.yaml", ["network"]),
    "kd_lightning.OfflineDistillation": (
        "digits/offline_kd.yaml",
        ["teacher", "teacher_weights", "allow_untrained_teacher"],
    ),
    "kd_lightning.OnlineDistillation": ("digits/online_kd.yaml", ["peers", "mutual", "ensemble_terms"]),
    "kd_lightning.LayerwiseSelfDistillation": ("digits/self_byot.yaml", ["exits"]),
    "kd_lightning.TemporalSelfDistillation": ("digits/self_ema.yaml", ["teacher"]),
}


@pytest.mark.parametrize("class_path", MODES)
def test_model_help_lists_the_mode_and_the_shared_parameters(class_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", f"--model.help={class_path}"])
    assert stop.value.code in (0, None)
    text = capsys.readouterr().out
    for name in [*MODES[class_path][1], *SHARED_ARGUMENTS]:
        assert f"--model.{name} " in text, f"{name} missing from the help of {class_path}"


@pytest.mark.parametrize("class_path", MODES)
def test_print_config_holds_every_parameter(class_path, capsys, in_project_copy):
    config, own = MODES[class_path]
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(CONFIGS / config), "--print_config"])
    assert stop.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    init_args = printed["model"]["init_args"]
    assert printed["model"]["class_path"].endswith(class_path.rsplit(".", 1)[-1])
    linked = {"num_classes"}  # set from the datamodule by the CLI's link, so never printed
    for name in [*own, *(set(SHARED_ARGUMENTS) - linked)]:
        assert name in init_args, f"{name} missing from --print_config of {config}"
