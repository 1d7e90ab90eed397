"""``DistillationLoss``: the contract of every loss module; ``TokenLoss``: its form for sequences."""

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


ANY_LAYERS = 0
"""``layers_per_network`` of a loss that takes any number (at least one) of paired layers: a layer map."""


class TokenLoss(DistillationLoss):
    """Base of the per-token losses over sequences: ``forward(student, teacher, target=None, mask=None,
    num_tokens=None) -> scalar float32 tensor``.

    ``student`` and ``teacher`` are ``[B, L, V]`` logits (``token_kind = "logits"``) or ``[B, L, H]`` hidden states
    (``token_kind = "hidden"``), aligned position by position; ``mask`` ``[B, L]`` (bool) selects the positions that
    count. The loss is ``sum over selected positions of the per-token loss / num_tokens``; ``num_tokens`` defaults to
    the number of selected positions. The Lightning modules choose ``mask`` from the batch by :attr:`positions` (see
    :mod:`kd_lightning.core.tokens`: labelled tokens, real tokens, the causal shift; by default ``"real"``, every real
    token, DistilBERT's convention) and pass as ``num_tokens`` the effective batch's share of tokens, so the loss
    stays a mean per real token under padding, gradient accumulation and DDP. The loss itself never shifts: for a
    causal LM the mask already excludes the last position.
    """

    token_kind: ClassVar[str] = "logits"
    positions: str = "real"

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        num_tokens: Tensor | float | None = None,
    ) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} must implement forward(student, teacher, target=None, mask=None, num_tokens=None)."
        )
