"""The ``kd-lightning`` command: LightningCLI with modules and datamodules chosen by ``class_path``.

``kd-lightning fit --config configs/digits/offline_kd.yaml`` trains, then tests the best checkpoint and prints the
:class:`~kd_lightning.callbacks.DistillationReport` (``--test_after_fit false`` skips that).
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from kd_lightning.callbacks import DistillationReport
from kd_lightning.modules import DistillationModule


class KDLightningCLI(LightningCLI):
    """LightningCLI that links ``data.num_classes`` into the model and tests after fitting."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(DistillationReport, "report")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="Test the best checkpoint after fit.")

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and getattr(checkpoint, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def build_cli(args: list[str] | None = None, run: bool = True) -> KDLightningCLI:
    """Parse ``args`` (default ``sys.argv``), instantiate, and run the subcommand unless ``run=False``."""
    return KDLightningCLI(
        DistillationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``kd-lightning`` console script."""
    build_cli(args)


if __name__ == "__main__":
    main()
