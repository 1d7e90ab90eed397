"""The ``kd-lightning`` command: LightningCLI with modules and datamodules chosen by ``class_path``.

``kd-lightning fit --config configs/digits/offline_kd.yaml`` trains, then tests the best checkpoint and prints the
:class:`~kd_lightning.callbacks.DistillationReport` (``--test_after_fit false`` skips that). Errors are printed once,
without a traceback unless ``KD_LIGHTNING_DEBUG=1`` (see :func:`main`).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.model_helpers import is_overridden

from kd_lightning.callbacks import DistillationReport
from kd_lightning.cli import quiet, resume
from kd_lightning.cli.diagnose import debug_requested, error_boundary
from kd_lightning.files import AtomicCheckpointIO
from kd_lightning.modules import DistillationModule
from kd_lightning.modules._lightning import CheckpointPathCLI


class KDArgumentParser(LightningArgumentParser):
    """Lightning's parser, made safe for networks built by a function (``class_path: kd_lightning.models.timm_model``,
    ``torchvision.models.resnet18``) inside a model whose ``num_classes`` is linked from the datamodule.

    A jsonargparse bug (every release up to 4.53, the newest): the link ``data.num_classes`` ->
    ``model.init_args.num_classes`` stores ``linked_targets={"num_classes"}`` in the ``model`` action's sub-parser
    options. When a later value for ``model`` (``--model.init_args.ce_weight=0.5``) is merged into the config,
    ``ActionTypeHint.discard_init_args_on_class_path_change`` builds a parser for every nested ``class_path`` of the
    model (the teacher, the student) with those same options, and for a function ``cached_get_class_parser`` drops
    ``instantiate`` but not ``linked_targets``: ``add_function_arguments() got an unexpected keyword argument
    'linked_targets'``. The option only clears "required" from the link's targets, which are the model's, not the
    builder's: it is ignored here.
    """

    def add_function_arguments(
        self, function: Callable, *args: Any, linked_targets: Any = None, **kwargs: Any
    ) -> list[str]:
        return super().add_function_arguments(function, *args, **kwargs)


class KDLightningCLI(CheckpointPathCLI):
    """LightningCLI that links ``data.num_classes`` into the model and tests after fitting."""

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Lightning's parser, as :class:`KDArgumentParser` (every sub-parser jsonargparse makes is of this class)."""
        if self.parser_class is LightningArgumentParser:
            self.parser_class = KDArgumentParser
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(DistillationReport, "report")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="Test the best checkpoint after fit.")

    def resolve_ckpt_path(self) -> None:
        """Replaces LightningCLI's, which re-parses the model from the checkpoint's hyperparameters (so a checkpoint
        of another module silently changed the run, and config edits were dropped): see :mod:`kd_lightning.cli.resume`.
        ``--ckpt_path last`` becomes the run's newest ``last.ckpt`` or an error; a checkpoint of another module or
        model configuration is refused; a resumed fit logs into the run it resumes."""
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else None
        if section is not None and section.get("ckpt_path"):
            section["ckpt_path"] = str(resume.resolve(section["ckpt_path"], section, subcommand))

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Lightning's Trainer, with checkpoint files written atomically and read by the library's defensive loader
        (:class:`~kd_lightning.files.AtomicCheckpointIO`) unless the config gives its own checkpoint IO, without
        Lightning's product tips, and with the model summary without an empty FLOPs column (:mod:`.quiet`)."""
        section = self.config_init[self.subcommand] if self.subcommand else self.config_init
        chosen = (section.get("trainer") or {}).get("callbacks")
        chosen = list(chosen) if isinstance(chosen, (list, tuple)) else [chosen]  # before the Trainer appends to it
        with quiet.lightning_tips():
            trainer = super().instantiate_trainer(**kwargs)
        strategy = trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        quiet.compact_summary(trainer, chosen)
        return trainer

    def before_fit(self) -> None:
        """Refuse, before training, a fit whose test after fitting cannot run (a datamodule without test data)."""
        if not self.config[self.subcommand].get("test_after_fit", True) or self.datamodule is None:
            return
        if not is_overridden("test_dataloader", self.datamodule, LightningDataModule):
            name = type(self.datamodule).__name__
            raise ValueError(
                f"test_after_fit tests the best checkpoint when the fit ends but {name} has no test_dataloader, so the "
                f"run would fail after training; set --test_after_fit=false, or give {name} a test split."
            )

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        checkpoint = self.trainer.checkpoint_callback
        ckpt_path = "best" if checkpoint is not None and getattr(checkpoint, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def _raising_parser_kwargs() -> dict[str, dict[str, bool] | bool]:
    """Parser options for the main parser and every subcommand parser: parse errors raise (the boundary prints
    them) instead of exiting, and options are never abbreviated (``--trainer.max_epoch`` is a typo, not a prefix)."""
    options = {"exit_on_error": False, "allow_abbrev": False}
    return {**options, **{name: dict(options) for name in KDLightningCLI.subcommands()}}


def build_cli(args: list[str] | None = None, run: bool = True) -> KDLightningCLI:
    """Parse ``args`` (default ``sys.argv``), instantiate, and run the subcommand unless ``run=False``."""
    return KDLightningCLI(
        DistillationModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=_raising_parser_kwargs(),
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``kd-lightning`` console script, and the CLI's one error boundary.

    Any error -- parsing, instantiating the config, or the run -- is printed once to stderr as a short block
    (:mod:`kd_lightning.cli.diagnose`), and the process exits with 2 for a rejected command line or config, 1 for a run
    that failed and 130 after Ctrl-C. ``KD_LIGHTNING_DEBUG=1`` or ``--debug`` adds the full traceback. ``--help`` and
    ``--print_config`` exit as usual.
    """
    from_argv = args is None
    args, debug = debug_requested(sys.argv[1:] if from_argv else args)
    with error_boundary(args, debug), _argv_without_debug(args if from_argv else None), warnings.catch_warnings():
        build_cli(None if from_argv else args)


@contextlib.contextmanager
def _argv_without_debug(args: list[str] | None) -> Iterator[None]:
    """``sys.argv[1:]`` as ``args`` inside the block (LightningCLI reads ``sys.argv`` itself; passing the arguments
    as ``args`` too would warn), restored after it."""
    if args is None:
        yield
        return
    saved = sys.argv[:]
    sys.argv[1:] = args
    try:
        yield
    finally:
        sys.argv[:] = saved


if __name__ == "__main__":
    main()
