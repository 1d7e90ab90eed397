"""KD + AT + FitNets + RKD in one config: adapters are built in setup, optimized, checkpointed and restored."""

import torch
from helpers import CONFIGS, tiny_fit

from kd_lightning import OfflineDistillation
from kd_lightning.cli import build_cli

CONFIG = str(CONFIGS / "digits/kd_at_rkd.yaml")
TINY = tiny_fit(limit_train_batches=3, limit_val_batches=2, test_after_fit=True)


def test_combined_terms_fit_with_adapters_in_optimizer_and_checkpoint(in_project_copy):
    cli = build_cli(["--config", CONFIG, *TINY], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    model = cli.model
    names = [term.name for term in model.objective.terms]
    assert names == ["kd", "at", "fitnets", "rkd"]
    assert {f"train/{name}" for name in names} <= set(cli.trainer.callback_metrics)

    regressor = model.objective.terms[2].loss.regressor
    adapter_params = list(regressor.parameters())
    assert adapter_params, "FitNets regressor was not built in setup"
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in adapter_params} <= optimized
    assert not optimized & {id(p) for p in model.teacher.parameters()}

    path = cli.trainer.checkpoint_callback.last_model_path
    saved = torch.load(path, weights_only=True)["state_dict"]
    adapter_keys = [k for k in saved if k.startswith("objective.terms.2.loss.regressor.")]
    assert adapter_keys and not any(k.startswith("teacher.") for k in saved)

    restored = OfflineDistillation.load_from_checkpoint(path)
    restored_state = restored.state_dict()
    for key in adapter_keys:
        assert torch.equal(restored_state[key], saved[key])
