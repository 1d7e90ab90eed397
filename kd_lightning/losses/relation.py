"""Relation-based losses: the student matches relations between the samples of a batch, or between two layers.

RKD, SP, PKT and CC compare within-network relations between the ``B`` samples of a batch, so student and teacher
feature sizes may differ (only the batch sizes must agree). Their inputs are vectors ``[B, D]`` or maps
``[B, C, H, W]`` (any ``[B, ...]`` with 2 to 4 dims), flattened per sample to ``[B, C*H*W]``. FSP compares the
relation between two layers of one network (a pair of maps per network).

Every loss treats the teacher as a constant target (it is detached), computes in float32 and returns an unweighted
scalar; the weight lives in the caller's ``DistillTerm``. The reductions follow HobbitLong/RepDistiller
(``distiller_zoo``), so the CIFAR-100 weights of the CRD benchmark apply: RKD 1, SP 3000, PKT 30000, CC 0.02, FSP 50.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.losses._checks import (
    check_ndim,
    check_non_negative,
    check_positive,
    check_same_batch,
    full_precision,
    pool_to_smaller,
)
from kd_lightning.losses.adapters import LazyAdapter, conv_regressor
from kd_lightning.losses.base import DistillationLoss

__all__ = [
    "CCLoss",
    "FSPLoss",
    "PKTLoss",
    "RKDLoss",
    "SPLoss",
    "cc_loss",
    "fsp_loss",
    "pkt_loss",
    "rkd_loss",
    "sp_loss",
]


def _flat_pair(student: Tensor, teacher: Tensor, loss: str, min_batch: int = 1) -> tuple[Tensor, Tensor]:
    """Validate ``[B, ...]`` features of one batch; return them flattened to ``[B, D]``, float32, teacher detached."""
    check_ndim(student, (2, 3, 4), loss, "student")
    check_ndim(teacher, (2, 3, 4), loss, "teacher")
    check_same_batch(student, teacher)
    if student.shape[0] < min_batch:
        raise ValueError(
            f"{loss} relates samples of a batch and expected at least {min_batch} samples but got batch size "
            f"{student.shape[0]}; use a larger batch."
        )
    return student.flatten(1).float(), teacher.detach().flatten(1).float()


def _pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances ``[B, B]`` via ``|a|^2 + |b|^2 - 2 a.b`` clamped at ``eps``, zero diagonal (RepDistiller)."""
    squared = x.pow(2).sum(dim=1)
    dist = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * x @ x.t()).clamp(min=eps).sqrt()
    return dist * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


def _angles(x: Tensor) -> Tensor:
    """Cosines ``[B, B, B]``: ``[i, j, k] = <unit(x_j - x_i), unit(x_k - x_i)>`` (0 where a difference vanishes)."""
    diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_loss(student: Tensor, teacher: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """Relational knowledge distillation: match pairwise distances and triplet angles between samples.

    Park, Kim, Lu, Cho, CVPR 2019, "Relational Knowledge Distillation".

    With ``d_ij = ||x_i - x_j|| / mean_{d_kl > 0} d_kl`` and ``a_ijk = <unit(x_j - x_i), unit(x_k - x_i)>``::

        loss = distance_weight * mean_ij smooth_l1(d^s_ij, d^t_ij) + angle_weight * mean_ijk smooth_l1(a^s_ijk, a^t_ijk)

    Scale of RepDistiller ``RKDLoss`` (the 25 / 50 inner weights live here): use with weight 1. As there, the
    angle mean runs over all ``B**3`` triplets, degenerate ones (``j == i`` or ``k == i``, cosine 0 on both sides)
    included, and distances are ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12))``.

    Args:
        student: student features ``[B, D_s]`` or ``[B, C, H, W]`` (flattened per sample), ``B >= 2``.
        teacher: teacher features ``[B, D_t]`` or ``[B, C, H, W]`` (treated as a constant, detached).
        distance_weight: weight of the distance term (>= 0).
        angle_weight: weight of the angle term (>= 0).

    Returns:
        Scalar float32 tensor.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> round(rkd_loss(x, 3 * x).item(), 6)
        0.0
        >>> round(rkd_loss(x, torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).item(), 4)
        0.6522
    """
    check_non_negative("distance_weight", distance_weight)
    check_non_negative("angle_weight", angle_weight)
    student, teacher = _flat_pair(student, teacher, "rkd_loss", min_batch=2)
    with full_precision(student):
        d_s, d_t = _pairwise_distances(student), _pairwise_distances(teacher)
        d_s = d_s / (d_s.sum() / (d_s > 0).sum())
        d_t = d_t / (d_t.sum() / (d_t > 0).sum())
        loss_distance = F.smooth_l1_loss(d_s, d_t)
        loss_angle = F.smooth_l1_loss(_angles(student), _angles(teacher))
    return distance_weight * loss_distance + angle_weight * loss_angle


class RKDLoss(DistillationLoss):
    """Module form of :func:`rkd_loss`; use with weight 1 (RepDistiller scale, 25 / 50 inside).

    Args:
        distance_weight: weight of the distance term (default 25, as RepDistiller).
        angle_weight: weight of the angle term (default 50, as RepDistiller).

    Example:
        >>> loss = RKDLoss()
        >>> loss(torch.randn(8, 32), torch.randn(8, 64)).shape
        torch.Size([])
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        check_non_negative("distance_weight", distance_weight)
        check_non_negative("angle_weight", angle_weight)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the RKD loss; ``target`` is ignored."""
        return rkd_loss(student, teacher, self.distance_weight, self.angle_weight)

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving distillation: match the row-normalised batch similarity (Gram) matrices.

    Tung & Mori, ICCV 2019, "Similarity-Preserving Knowledge Distillation".

    ``G = normalize_rows(f f^T)`` over flattened features ``f`` ``[B, D]``; ``loss = ||G_s - G_t||_F^2 / B^2``.
    Scale of RepDistiller ``Similarity``: use with weight 3000.

    Args:
        student: student features ``[B, D_s]`` or ``[B, C, H, W]`` (flattened per sample).
        teacher: teacher features ``[B, D_t]`` or ``[B, C, H, W]`` (treated as a constant, detached).

    Returns:
        Scalar float32 tensor.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> sp_loss(x, 2 * x).item()
        0.0
        >>> round(sp_loss(x, torch.eye(2)).item(), 4)
        0.1992
    """
    student, teacher = _flat_pair(student, teacher, "sp_loss")
    with full_precision(student):
        g_s = F.normalize(student @ student.t(), p=2, dim=1)
        g_t = F.normalize(teacher @ teacher.t(), p=2, dim=1)
    return (g_s - g_t).pow(2).sum() / len(student) ** 2


class SPLoss(DistillationLoss):
    """Module form of :func:`sp_loss`; use with weight 3000 (RepDistiller scale).

    Example:
        >>> loss = SPLoss()
        >>> loss(torch.randn(8, 16, 4, 4), torch.randn(8, 32, 4, 4)).shape
        torch.Size([])
    """

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the SP loss; ``target`` is ignored."""
        return sp_loss(student, teacher)


def _similarity_distribution(x: Tensor, eps: float) -> Tensor:
    """Cosine similarities shifted to ``[0, 1]`` and normalised per row into distributions ``[B, B]``."""
    x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    similarity = (x @ x.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer: KL between the batch's cosine-similarity distributions.

    Passalis & Tefas, ECCV 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer".

    ``p_ij = (1 + cos(x_i, x_j)) / 2``, normalised so that each row sums to 1, for student (``p^s``) and teacher
    (``p^t``); ``loss = mean_ij p^t_ij * log((p^t_ij + eps) / (p^s_ij + eps))``, the mean over all ``B**2`` entries.
    Scale of RepDistiller ``PKT`` (the authors' code, with its ``eps`` and its mean): use with weight 30000.
    The norms are taken with ``torch.linalg.vector_norm`` (same value), so an all-zero row gets a zero, not a NaN,
    gradient.

    Args:
        student: student features ``[B, D_s]`` or ``[B, C, H, W]`` (flattened per sample).
        teacher: teacher features ``[B, D_t]`` or ``[B, C, H, W]`` (treated as a constant, detached).
        eps: stabiliser of the norms and of the log ratio (> 0).

    Returns:
        Scalar float32 tensor.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(pkt_loss(x, 5 * x).item(), 6)
        0.0
        >>> round(pkt_loss(x, torch.ones(2, 2)).item(), 4)
        0.0294
    """
    check_positive("eps", eps)
    student, teacher = _flat_pair(student, teacher, "pkt_loss")
    with full_precision(student):
        p_s = _similarity_distribution(student, eps)
        p_t = _similarity_distribution(teacher, eps)
        return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


class PKTLoss(DistillationLoss):
    """Module form of :func:`pkt_loss`; use with weight 30000 (RepDistiller scale).

    Args:
        eps: stabiliser of the norms and of the log ratio (default 1e-7, as the authors' code).

    Example:
        >>> loss = PKTLoss()
        >>> loss(torch.randn(8, 32), torch.randn(8, 64)).shape
        torch.Size([])
    """

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        check_positive("eps", eps)
        self.eps = eps

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the PKT loss; ``target`` is ignored."""
        return pkt_loss(student, teacher, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def cc_loss(
    student: Tensor,
    teacher: Tensor,
    embed_student: nn.Module | None = None,
    embed_teacher: nn.Module | None = None,
) -> Tensor:
    """Correlation congruence in RepDistiller's form: products of consecutive samples' embedding differences.

    Peng et al., ICCV 2019, "Correlation Congruence for Knowledge Distillation".

    With ``e^s = embed_student(f^s)`` and ``e^t = embed_teacher(f^t)`` (``[B, K]``) and ``delta = |e^s - e^t|``::

        loss = mean_{i < B-1} sum_k delta_ik * delta_(i+1)k

    Departure from the paper: the paper matches Gaussian-kernel correlation matrices between samples; this is the
    form of RepDistiller's ``Correlation`` (code from the paper's authors), for which the benchmark weight was tuned:
    use with weight 0.02 and linear 128-d embeddings on both sides (:class:`CCLoss`). The teacher features are
    detached before ``embed_teacher``, so the teacher embedding trains but no gradient reaches the teacher network.

    Args:
        student: student features ``[B, D_s]`` or ``[B, C, H, W]`` (flattened per sample), ``B >= 2``.
        teacher: teacher features ``[B, D_t]`` or ``[B, C, H, W]`` (treated as a constant, detached).
        embed_student: maps flattened student features ``[B, D_s]`` to ``[B, K]`` (identity when ``None``).
        embed_teacher: maps flattened teacher features ``[B, D_t]`` to ``[B, K]`` (identity when ``None``).

    Returns:
        Scalar float32 tensor.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
        >>> cc_loss(x, x).item()
        0.0
        >>> cc_loss(x, torch.zeros(3, 2)).item()
        1.0
    """
    student, teacher = _flat_pair(student, teacher, "cc_loss", min_batch=2)
    if embed_student is not None:
        student = embed_student(student).float()
    if embed_teacher is not None:
        teacher = embed_teacher(teacher).float()
    if student.shape != teacher.shape:
        raise ValueError(
            f"cc_loss expected student and teacher embeddings of the same shape but got {tuple(student.shape)} "
            f"(student) and {tuple(teacher.shape)} (teacher); use CCLoss, whose embeddings map both to embed_dim."
        )
    with full_precision(student):
        delta = (student - teacher).abs()
        return (delta[:-1] * delta[1:]).sum(dim=1).mean()


class CCLoss(DistillationLoss):
    """Module form of :func:`cc_loss` with trainable linear embeddings; use with weight 0.02 (RepDistiller scale).

    Owns two :class:`~kd_lightning.losses.adapters.LazyAdapter` embeddings, ``embed_student`` (``D_s -> embed_dim``)
    and ``embed_teacher`` (``D_t -> embed_dim``), plain linear layers like RepDistiller's ``LinearEmbed`` (no L2
    normalisation), built from the first batch's flattened feature sizes. Both train; the teacher does not.

    Args:
        embed_dim: size ``K`` of the embeddings (default 128, as RepDistiller's ``feat_dim``).

    Example:
        >>> loss = CCLoss(embed_dim=16)
        >>> loss(torch.randn(8, 32), torch.randn(8, 64)).shape
        torch.Size([])
        >>> loss.embed_teacher.net
        Linear(in_features=64, out_features=16, bias=True)
    """

    def __init__(self, embed_dim: int = 128) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or isinstance(embed_dim, bool):
            raise ValueError(f"expected an integer embed_dim but got embed_dim={embed_dim!r}; pass e.g. 128.")
        check_positive("embed_dim", embed_dim)
        self.embed_dim = embed_dim
        self.embed_student = LazyAdapter(conv_regressor)
        self.embed_teacher = LazyAdapter(conv_regressor)

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Embed both features (building the embeddings on the first call) and return the CC loss."""
        flat_s, flat_t = _flat_pair(student, teacher, "cc_loss", min_batch=2)
        self.embed_student.build((flat_s.shape[1],), (self.embed_dim,), device=flat_s.device)
        self.embed_teacher.build((flat_t.shape[1],), (self.embed_dim,), device=flat_t.device)
        return cc_loss(flat_s, flat_t, self.embed_student.net, self.embed_teacher.net)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}"


def _fsp_pair(maps: Sequence[Tensor] | Tensor, role: str) -> tuple[Tensor, Tensor]:
    """Validate one network's two layers: a tuple/list of two ``[B, C, H, W]`` maps of one batch."""
    if not isinstance(maps, (tuple, list)) or len(maps) != 2:
        got = f"a tensor of shape {tuple(maps.shape)}" if isinstance(maps, Tensor) else f"{type(maps).__name__}"
        if isinstance(maps, (tuple, list)):
            got = f"a {type(maps).__name__} of {len(maps)} items"
        raise ValueError(
            f"FSP needs two layers per network: expected {role}=(f1, f2), two [B, C, H, W] maps, but got {got}; "
            f"tap two layers of the {role} (e.g. the input and output of a stage)."
        )
    first, second = maps
    check_ndim(first, (4,), "fsp_loss", f"{role} first-layer")
    check_ndim(second, (4,), "fsp_loss", f"{role} second-layer")
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"fsp_loss expected the {role}'s two layers from the same batch but got batch sizes {first.shape[0]} "
            f"and {second.shape[0]}; tap both layers during one forward pass."
        )
    return first, second


def _fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """``[B, C1, C2]`` Gram matrix between two layers, the larger map average-pooled to the smaller size."""
    first, second = pool_to_smaller(first, second)
    return torch.einsum("bchw,bdhw->bcd", first, second) / (first.shape[2] * first.shape[3])


def fsp_loss(student: Sequence[Tensor], teacher: Sequence[Tensor]) -> Tensor:
    """Flow of solution procedure (FSP): match the Gram matrices between two layers of each network.

    Yim, Joo, Bae, Kim, CVPR 2017, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization
    and Transfer Learning".

    ``G[b] = f1[b] f2[b]^T / (H * W)`` (``[B, C1, C2]``, maps flattened over space) after average-pooling the
    spatially larger map of the pair to the smaller size; ``loss = mean (G_s - G_t)^2`` over all ``B * C1 * C2``
    entries. Scale of RepDistiller ``FSP`` (one layer pair; RepDistiller sums one such mean per pair): use with
    weight 50. RepDistiller pools to a square ``H x H``; here each side is pooled to the smaller ``H`` and ``W``
    (the same for square maps).

    Args:
        student: ``(f1_s, f2_s)``, two student maps ``[B, C1, H1, W1]`` and ``[B, C2, H2, W2]``.
        teacher: ``(f1_t, f2_t)``, two teacher maps with the same channels ``C1``, ``C2`` (treated as constants,
            detached); their spatial sizes may differ from the student's. Use :class:`FSPLoss` with
            ``adapter=True`` when the channels differ.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> f1, f2 = torch.ones(2, 3, 8, 8), torch.ones(2, 4, 4, 4)
        >>> fsp_loss((f1, f2), (f1, f2)).item()
        0.0
        >>> fsp_loss((f1, f2), (f1, 2 * f2)).item()
        1.0
    """
    s1, s2 = _fsp_pair(student, "student")
    t1, t2 = _fsp_pair(teacher, "teacher")
    check_same_batch(s1, t1)
    if (s1.shape[1], s2.shape[1]) != (t1.shape[1], t2.shape[1]):
        raise ValueError(
            f"fsp_loss expected student and teacher layers with the same channels but got {s1.shape[1]}, "
            f"{s2.shape[1]} (student) and {t1.shape[1]}, {t2.shape[1]} (teacher); pass adapter=True to FSPLoss "
            f"to map each student map to the teacher's channels with a 1x1 conv."
        )
    with full_precision(s1):
        g_s = _fsp_matrix(s1.float(), s2.float())
        g_t = _fsp_matrix(t1.detach().float(), t2.detach().float())
        return (g_s - g_t).pow(2).mean()


def _conv1x1(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """1x1 convolution from the student's ``C_s`` channels to the teacher's ``C_t`` (spatial size untouched)."""
    return nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1, bias=False)


class FSPLoss(DistillationLoss):
    """Module form of :func:`fsp_loss`; use with weight 50 (RepDistiller scale).

    Args:
        adapter: when ``True``, owns two 1x1-conv :class:`~kd_lightning.losses.adapters.LazyAdapter` modules
            (``adapters[0]`` for the first layer, ``adapters[1]`` for the second) that map each student map to the
            teacher's channels before the FSP matrices are formed; built from the first batch, trained, saved.
            Not in the paper (which needs equal channels); needed when student and teacher widths differ.

    Example:
        >>> loss = FSPLoss(adapter=True)
        >>> student = (torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4))
        >>> teacher = (torch.randn(2, 32, 8, 8), torch.randn(2, 64, 4, 4))
        >>> loss(student, teacher).shape
        torch.Size([])
    """

    layers_per_network = 2

    def __init__(self, adapter: bool = False) -> None:
        super().__init__()
        self.adapter = adapter
        self.adapters = nn.ModuleList([LazyAdapter(_conv1x1), LazyAdapter(_conv1x1)]) if adapter else None

    def forward(self, student: Sequence[Tensor], teacher: Sequence[Tensor], target: Tensor | None = None) -> Tensor:
        """Return the FSP loss of ``student=(f1_s, f2_s)`` against ``teacher=(f1_t, f2_t)``; ``target`` is ignored."""
        if self.adapters is not None:
            s_maps, t_maps = _fsp_pair(student, "student"), _fsp_pair(teacher, "teacher")
            check_same_batch(s_maps[0], t_maps[0])
            student = tuple(a(s.float(), t) for a, s, t in zip(self.adapters, s_maps, t_maps, strict=True))
        return fsp_loss(student, teacher)

    def extra_repr(self) -> str:
        return f"adapter={self.adapter}"
