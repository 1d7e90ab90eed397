"""``kd-lightning fit --ckpt_path``: ``last`` finds the run's checkpoint, and the resumed run logs into the same run."""

import csv

import pytest
import torch
from helpers import CONFIGS

from kd_lightning.cli import main
from kd_lightning.cli.resume import find_last, normalise

RUN = CONFIGS / "digits" / "offline_kd.yaml"
BUDGET = [
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--test_after_fit=false",
    "--trainer.enable_progress_bar=false",
]
LOGS = "runs/digits/offline_kd/lightning_logs"


def metric_rows(version_dir):
    with open(version_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_resume_from_last_continues_the_same_run_folder_and_its_metrics(in_project_copy):
    main(["fit", "--config", str(RUN), *BUDGET, "--trainer.max_epochs=1"])
    version = in_project_copy / LOGS / "version_0"
    first_rows = metric_rows(version)
    assert [row["epoch"] for row in first_rows] == ["0"]

    main(["fit", "--config", str(RUN), *BUDGET, "--trainer.max_epochs=3", "--ckpt_path=last"])
    assert sorted(path.name for path in (in_project_copy / LOGS).iterdir()) == ["version_0"]
    rows = metric_rows(version)
    assert rows[: len(first_rows)] == first_rows, "the interrupted run's metrics were lost"
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    saved = torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6 and saved["epoch"] == 2


def test_last_is_the_newest_last_checkpoint_of_the_configs_run_folders(in_project_copy):
    for version in ("version_0", "version_1"):
        folder = in_project_copy / LOGS / version / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"")
    trainer = {
        "default_root_dir": "runs/digits/offline_kd",
        "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": "runs/digits/offline_kd"}},
    }
    newest = in_project_copy / LOGS / "version_1" / "checkpoints" / "last.ckpt"
    newest.touch()
    assert find_last(trainer).resolve() == newest


SAME_MEANING = [
    ({"class_path": "kd_lightning.OfflineDistillation"}, {"class_path": "kd_lightning.modules.OfflineDistillation"}),
    ({"betas": (0.9, 0.999)}, {"betas": [0.9, 0.999]}),
]


@pytest.mark.parametrize(("saved", "given"), SAME_MEANING)
def test_configs_compare_by_meaning_not_spelling(saved, given):
    assert normalise(saved) == normalise(given)


def test_predict_returns_the_students_logits_for_the_test_split(in_project_copy):
    main(["fit", "--config", str(RUN), *BUDGET, "--trainer.max_epochs=1"])
    main(["predict", "--config", str(RUN), "--ckpt_path=last", "--trainer.enable_progress_bar=false"])
    from kd_lightning.cli import build_cli

    cli = build_cli(["--config", str(RUN), "--trainer.enable_progress_bar=false"], run=False)
    batches = cli.trainer.predict(cli.model, datamodule=cli.datamodule, ckpt_path=str(find_last(cli.config.trainer)))
    logits = torch.cat(batches)
    cli.datamodule.setup("predict")
    assert logits.shape == (len(cli.datamodule.splits["test"]), 10) and torch.isfinite(logits).all()
