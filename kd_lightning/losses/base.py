"""``DistillationLoss``: the contract every loss module of the library follows."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class DistillationLoss(nn.Module):
    """Base of the loss modules: ``forward(student, teacher, target=None) -> scalar float32 tensor``.

    ``student`` and ``teacher`` are one output of each network (logits ``[B, C]`` or features ``[B, ...]``), or, when
    ``layers_per_network > 1``, a tuple of that many outputs of each network (FSP relates two layers). A
    :class:`~kd_lightning.DistillTerm` checks the layer names it is given against ``layers_per_network`` when it is
    built, so a term asking for the wrong number of layers fails before training. ``target`` (class indices ``[B]``)
    is read only by losses that need it (DKD).

    Adapters (regressors, embeddings) belong to the loss module: built from the first batch, trained with the student
    and saved in checkpoints.
    """

    layers_per_network: ClassVar[int] = 1

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(student, teacher, target=None).")
