"""The same config and seed give bit-identical weights on CPU (``deterministic: true``), augmentation and dropout on."""

import pytest
import torch
from helpers import CONFIGS

from kd_lightning.cli import build_cli

BUDGET = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
    "--test_after_fit=false",
    "--data.init_args.augment=true",
]


def train(config: str, seed: int) -> dict[str, torch.Tensor]:
    cli = build_cli(["--config", str(CONFIGS / "digits" / config), *BUDGET, f"--seed_everything={seed}"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return {key: value.clone() for key, value in cli.model.state_dict().items()}


@pytest.mark.parametrize("config", ["offline_kd.yaml", "online_dml.yaml", "self_byot.yaml"])
def test_same_config_and_seed_give_identical_weights(config, in_project_copy):
    first, second = train(config, seed=0), train(config, seed=0)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    other = train(config, seed=1)
    assert any(not torch.equal(first[key], other[key]) for key in first if first[key].is_floating_point())
