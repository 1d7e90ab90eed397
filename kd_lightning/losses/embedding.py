"""Sentence-embedding losses: a student encoder's pooled embeddings ``[B, H]`` match the teacher's, one by one and as a
batch's pairwise similarities.

What a sentence encoder is used for is its embeddings' cosines: search ranks by them, clustering groups by them, and
the fidelity of a distilled encoder is measured on them (the Spearman correlation of the student's pairwise cosines
with the teacher's, nearest-neighbour agreement). :func:`embedding_cosine_loss` pulls each student embedding towards
its teacher embedding's direction (as DistilBERT's cosine loss does per token); :func:`pairwise_cosine_loss` makes the
batch's cosine-similarity matrix the teacher's (a relation-based loss: similarity-preserving KD with cosines). The
embeddings are usually the ``"pooled"`` output (``DistillTerm(student="pooled")``: the last hidden states averaged
over the real tokens, :data:`kd_lightning.core.taps.POOLED`). Every loss treats the teacher as a constant target
(detached), computes in float32 and returns an unweighted scalar.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_lightning.losses.adapters import LazyAdapter
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.hidden import linear_projection

__all__ = ["EmbeddingCosineLoss", "PairwiseCosineLoss", "embedding_cosine_loss", "pairwise_cosine_loss"]

_EPS = 1e-8


def _check_embeddings(student: Tensor, teacher: Tensor, loss: str, same_width: bool) -> tuple[Tensor, Tensor]:
    """Validate ``[B, H]`` embeddings of the same batch; return them float32, the teacher detached."""
    for role, tensor in (("student", student), ("teacher", teacher)):
        if tensor.ndim != 2:
            hint = (
                "; for per-token hidden states [B, L, H] read the 'pooled' output (DistillTerm(student='pooled')) "
                "or use HiddenCosineLoss"
                if tensor.ndim == 3
                else ""
            )
            raise ValueError(f"{loss} expected {role} embeddings [B, H] but got shape {tuple(tensor.shape)}{hint}.")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{loss} expected student and teacher embeddings of the same batch but got {student.shape[0]} (student) "
            f"and {teacher.shape[0]} (teacher) rows; feed both encoders the same batch."
        )
    if same_width and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"{loss} expected embeddings of the same width H but got {student.shape[1]} (student) and "
            f"{teacher.shape[1]} (teacher); use EmbeddingCosineLoss(project=True), which learns a Linear(H_s, H_t)."
        )
    return student.float(), teacher.detach().float()


def embedding_cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """One minus the cosine of each student embedding with its teacher embedding, averaged over the batch.

    ``loss = (1 / B) * sum_b (1 - cos(s_b, t_b))`` over ``[B, H]`` embeddings (``F.cosine_similarity``, ``eps =
    1e-8``): DistilBERT's cosine loss (Sanh et al. 2019) applied to sentence embeddings instead of tokens. Ranges over
    ``[0, 2]``; scale-free, so the L2 normalisation of sentence-transformers pipelines changes nothing.

    Args:
        student: student embeddings ``[B, H]``.
        teacher: teacher embeddings ``[B, H]`` (treated as a constant, detached).

    Example:
        >>> import torch
        >>> s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> embedding_cosine_loss(s, torch.tensor([[3.0, 0.0], [1.0, 0.0]])).item()
        0.5
    """
    student, teacher = _check_embeddings(student, teacher, "embedding_cosine_loss", same_width=True)
    return (1 - F.cosine_similarity(student, teacher, dim=-1, eps=_EPS)).mean()


def _cosine_matrix(embeddings: Tensor) -> Tensor:
    """``[B, B]`` cosine similarities of the rows of ``[B, H]`` (a zero row has cosine 0 with everything)."""
    unit = F.normalize(embeddings, p=2, dim=1, eps=_EPS)
    return unit @ unit.t()


def pairwise_cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """The batch's cosine-similarity matrix of the student against the teacher's, mean squared difference.

    ``C[i, j] = cos(x_i, x_j)`` for each network's ``[B, H]`` embeddings; ``loss = (1 / B^2) * sum_ij (C_s[i, j] -
    C_t[i, j])^2``. The similarity-preserving loss of Tung & Mori (ICCV 2019) with the cosine-similarity matrix in
    place of the row-normalised Gram matrix: the quantity a sentence encoder's retrieval and its fidelity measure
    (the Spearman correlation of pairwise cosines) read. The widths may differ (no projection is needed); the diagonal
    is 1 on both sides and contributes 0.

    Args:
        student: student embeddings ``[B, H_s]``.
        teacher: teacher embeddings ``[B, H_t]`` (treated as a constant, detached).

    Example:
        >>> import torch
        >>> s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> pairwise_cosine_loss(s, torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item()
        0.5
    """
    student, teacher = _check_embeddings(student, teacher, "pairwise_cosine_loss", same_width=False)
    return (_cosine_matrix(student) - _cosine_matrix(teacher)).pow(2).mean()


class EmbeddingCosineLoss(DistillationLoss):
    """Module form of :func:`embedding_cosine_loss`, with a learned ``Linear(H_s, H_t)`` when the widths differ.

    Args:
        project: when ``True`` (default) and ``H_s != H_t``, a trainable projection of the student's embeddings onto
            the teacher's width (a :class:`~kd_lightning.losses.adapters.LazyAdapter` built from the first batch and
            saved in checkpoints); with ``False`` the widths must be equal.

    Example:
        >>> import torch
        >>> loss = EmbeddingCosineLoss()
        >>> loss(torch.randn(4, 8), torch.randn(4, 16)).shape, loss.projection.net
        (torch.Size([]), Linear(in_features=8, out_features=16, bias=True))
    """

    def __init__(self, project: bool = True) -> None:
        super().__init__()
        self.project = project
        self.projection = LazyAdapter(linear_projection)

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the loss; ``target`` is ignored."""
        _check_embeddings(student, teacher, "EmbeddingCosineLoss", same_width=False)
        if student.shape[1] != teacher.shape[1]:
            if not self.project:
                _check_embeddings(student, teacher, "EmbeddingCosineLoss", same_width=True)
            student = self.projection(student, teacher)
        return embedding_cosine_loss(student, teacher)

    def extra_repr(self) -> str:
        return f"project={self.project}"


class PairwiseCosineLoss(DistillationLoss):
    """Module form of :func:`pairwise_cosine_loss` (no parameters).

    Example:
        >>> import torch
        >>> PairwiseCosineLoss()(torch.randn(4, 8), torch.randn(4, 16)).shape
        torch.Size([])
    """

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the loss; ``target`` is ignored."""
        return pairwise_cosine_loss(student, teacher)
