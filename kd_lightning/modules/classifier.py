"""``Classifier``: plain supervised training on the distillation code path (trains teachers and baselines)."""

from __future__ import annotations

from typing import Any

from torch import nn

from kd_lightning.core.networks import require_network
from kd_lightning.modules.base import DistillationModule


class Classifier(DistillationModule):
    """Cross-entropy training of one network: the teacher before distillation, or the student-alone baseline.

    Args:
        network: the network to train; saved in checkpoints under ``student.`` (so it can teach later).
        **kwargs: the shared settings of every mode (``num_classes``, ``optimizer``, ``lr_scheduler``,
            ``label_smoothing``, ``on_nonfinite``, ``compile``, ``channels_last``): see
            :class:`~kd_lightning.modules.DistillationModule`.

    Example:
        >>> import torch
        >>> from kd_lightning.models import DigitsMLP
        >>> model = Classifier(DigitsMLP(hidden=(16,)))
        >>> model(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, network: nn.Module, **kwargs: Any) -> None:
        super().__init__(student=require_network(network, "network"), terms=[], ce_weight=1.0, **kwargs)
        self.save_init_arguments()
