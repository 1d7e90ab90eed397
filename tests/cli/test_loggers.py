"""The logger configs under configs/loggers/ compose with a recipe (a second ``--config``) and write their files
with no network: W&B offline, TensorBoard event files, the rich progress bar beside the recipe's callbacks."""

import pytest
from helpers import CONFIGS, tiny_fit
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from kd_lightning.cli import build_cli

RECIPE = CONFIGS / "digits" / "offline_kd.yaml"
LOGGER_CONFIGS = sorted((CONFIGS / "loggers").glob("*.yaml"))
TINY = tiny_fit(log_every_n_steps=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B without network or account: offline mode, its settings and cache inside the test's folder."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home"))
    yield
    import wandb

    wandb.finish()


def fit(*configs, extra=()):
    cli = build_cli([arg for config in configs for arg in ("--config", str(config))] + TINY + list(extra), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_there_are_logger_configs():
    assert {path.name for path in LOGGER_CONFIGS} >= {"wandb.yaml", "tensorboard.yaml", "rich.yaml"}


@pytest.mark.parametrize("config", LOGGER_CONFIGS, ids=lambda path: path.name)
def test_logger_config_composes_with_a_recipe(config, in_project_copy, wandb_offline):
    cli = build_cli(["--config", str(RECIPE), "--config", str(config), "--test_after_fit=false"], run=False)
    assert any(isinstance(callback, ModelCheckpoint) for callback in cli.trainer.callbacks), "recipe callbacks kept"
    assert cli.trainer.logger is not None


def test_wandb_offline_run_writes_its_files_inside_the_run_directory(in_project_copy, wandb_offline):
    cli = fit(RECIPE, CONFIGS / "loggers" / "wandb.yaml")
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger) and logger.save_dir == "runs/digits/offline_kd"
    (run,) = (in_project_copy / "runs/digits/offline_kd/wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb")), f"no W&B run file in {run}: {sorted(p.name for p in run.iterdir())}"
    assert cli.trainer.global_step == 2


def test_tensorboard_writes_event_files(in_project_copy):
    cli = fit(RECIPE, CONFIGS / "loggers" / "tensorboard.yaml")
    assert isinstance(cli.trainer.logger, TensorBoardLogger)
    events = list((in_project_copy / "runs/digits/offline_kd/lightning_logs").glob("version_0/events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_rich_progress_bar_is_appended_to_the_recipe_callbacks(in_project_copy):
    cli = build_cli(["--config", str(RECIPE), "--config", str(CONFIGS / "loggers" / "rich.yaml")], run=False)
    kinds = [type(callback) for callback in cli.trainer.callbacks]
    assert ModelCheckpoint in kinds and RichProgressBar in kinds
    assert cli.trainer.progress_bar_callback is not None and isinstance(
        cli.trainer.progress_bar_callback, RichProgressBar
    )
