"""The self-distillation configs run real (tiny) CPU fits through the CLI and reload from their own checkpoints."""

import copy

import pytest
import torch
from helpers import CONFIGS, tiny_fit

from kd_lightning import LayerwiseSelfDistillation, TemporalSelfDistillation
from kd_lightning.cli import build_cli
from kd_lightning.modules.exits import BYOTExits
from kd_lightning.modules.self_distillation import SelfDistillation
from kd_lightning.teachers.temporal import EMATeacher, PSKDTeacher, SnapshotTeacher

TINY_BUDGET = tiny_fit(max_steps=3, limit_train_batches=3, limit_val_batches=2, test_after_fit=True)


def fit_config(name: str):
    cli = build_cli(["--config", str(CONFIGS / "digits" / f"{name}.yaml"), *TINY_BUDGET], run=False)
    assert isinstance(cli.model, LayerwiseSelfDistillation if name == "self_byot" else TemporalSelfDistillation)
    initial = copy.deepcopy(cli.model.student.state_dict())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    return cli, initial


def reload_last_checkpoint(cli) -> SelfDistillation:
    """``load_from_checkpoint(path)`` with no arguments: the CLI saved the whole config."""
    return SelfDistillation.load_from_checkpoint(cli.trainer.checkpoint_callback.last_model_path)


def test_self_ema_config(in_project_copy):
    cli, initial = fit_config("self_ema")
    module = cli.model
    assert isinstance(module.teacher, EMATeacher) and module.teacher.decay == 0.98
    teacher, student = module.teacher.network.state_dict(), module.student.state_dict()
    for key in teacher:
        assert not torch.equal(teacher[key], initial[key]) and not torch.equal(teacher[key], student[key]), key
    assert "val/teacher_acc" in cli.trainer.callback_metrics
    restored = reload_last_checkpoint(cli)
    for key, value in restored.teacher.network.state_dict().items():
        assert torch.equal(value, teacher[key])


def test_self_born_again_config(in_project_copy):
    cli, _ = fit_config("self_born_again")
    teacher = cli.model.teacher
    assert isinstance(teacher, SnapshotTeacher) and teacher.every_n_epochs == 5
    assert teacher.generation == 0, "3 steps of epoch 0: still generation 0, labels only"
    assert "train/ce" in cli.trainer.callback_metrics and "train/kd" not in cli.trainer.callback_metrics


def test_self_pskd_config(in_project_copy):
    cli, _ = fit_config("self_pskd")
    teacher = cli.model.teacher
    assert isinstance(teacher, PSKDTeacher) and teacher.alpha_max == 0.8
    assert int(teacher.seen.sum()) == 3 * 64
    assert "train/kd" in cli.trainer.callback_metrics
    restored = reload_last_checkpoint(cli)
    assert torch.equal(restored.teacher.log_probs, teacher.log_probs)
    assert torch.equal(restored.teacher.seen, teacher.seen)


def test_self_byot_config(in_project_copy, capsys):
    cli, _ = fit_config("self_byot")
    module = cli.model
    assert isinstance(module.exits, BYOTExits) and module.exits.layers == ("layer1", "layer2")
    assert {"val/acc_exit_layer1", "val/acc_exit_layer2"} <= set(cli.trainer.callback_metrics)
    (results,) = cli.trainer.test(module, datamodule=cli.datamodule)
    assert 0 <= results["test/acc_exit_layer1"] <= 1 and 0 <= results["test/acc_exit_layer2"] <= 1
    assert "kd_lightning exits" in capsys.readouterr().out
    restored = reload_last_checkpoint(cli)
    assert restored.exits.heads["layer2"].classifier.is_built
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        expected = module.eval().exit_logits(x)
        for layer, logits in restored.eval().exit_logits(x).items():
            torch.testing.assert_close(logits, expected[layer])


@pytest.mark.parametrize("name", ["self_ema", "self_born_again", "self_pskd", "self_byot"])
def test_configs_share_the_baseline_budget(name):
    def settings(path):
        cli = build_cli(["--config", str(path)], run=False)
        model, data = cli.model, cli.datamodule.hparams
        return cli.trainer.max_epochs, model.optimizer_factory, model.lr_scheduler_factory, data.batch_size

    base_epochs, base_optimizer, base_scheduler, base_batch = settings(CONFIGS / "digits" / "baseline.yaml")
    epochs, optimizer, scheduler, batch = settings(CONFIGS / "digits" / f"{name}.yaml")
    assert (epochs, batch) == (base_epochs, base_batch)
    parameter = [torch.nn.Parameter(torch.zeros(1))]
    assert optimizer(parameter).defaults == base_optimizer(parameter).defaults
    assert scheduler(optimizer(parameter)).T_max == base_scheduler(base_optimizer(parameter)).T_max


@pytest.mark.parametrize("name", ["self_ema", "self_born_again", "self_pskd", "self_byot"])
def test_configs_fit_in_bf16_mixed_precision(name, in_project_copy):
    args = ["--config", str(CONFIGS / "digits" / f"{name}.yaml"), *TINY_BUDGET, "--trainer.precision=bf16-mixed"]
    cli = build_cli([*args, "--trainer.logger=false", "--trainer.callbacks=[]"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
