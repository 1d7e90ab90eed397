"""``Classifier``: plain supervised training on the distillation code path (trains teachers and baselines)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from kd_lightning.modules._guards import check_network
from kd_lightning.modules.base import DistillationModule


class Classifier(DistillationModule):
    """Cross-entropy training of one network: the teacher before distillation, or the student-alone baseline.

    Args:
        network: the network to train; saved in checkpoints under ``student.`` (so it can teach later).
        num_classes: number of classes (linked from the datamodule by the CLI).
        optimizer: optimizer factory applied to the network's parameters.
        lr_scheduler: optional scheduler factory, stepped every epoch.
        label_smoothing: label smoothing of the cross-entropy.
        on_nonfinite: ``"stop"`` (default) or ``"skip"``: what a NaN/inf training loss does (see the base class).
        compile: compile networks in place (``nn.Module.compile()``, keys unchanged): ``true`` or names (``student``).
        channels_last: networks and 4-D input batches in ``torch.channels_last`` memory format.

    Example:
        >>> from kd_lightning.models import DigitsMLP
        >>> model = Classifier(DigitsMLP(hidden=(16,)))
        >>> model(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        network: nn.Module,
        num_classes: int = 10,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        on_nonfinite: str = "stop",
        compile: bool | Sequence[str] = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            student=check_network(network, "network"),
            terms=[],
            ce_weight=1.0,
            num_classes=num_classes,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            label_smoothing=label_smoothing,
            on_nonfinite=on_nonfinite,
            compile=compile,
            channels_last=channels_last,
        )
        self.save_init_arguments()
