"""The commands: ``kd-lightning`` (LightningCLI) and ``kd-lightning-export``, their one error boundary, the
``--ckpt_path`` policy and the loggers a resumed run continues. Nothing in the package imports this folder.
"""

from kd_lightning.cli.command import KDLightningCLI, build_cli, main

__all__ = ["KDLightningCLI", "build_cli", "main"]
