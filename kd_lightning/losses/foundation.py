"""Feature distillation from a frozen foundation-model teacher (a ViT) into a student's summary and patch features.

Ranzinger, Heinrich, Kautz, Molchanov, CVPR 2024, "AM-RADIO: Agglomerative Vision Foundation Model -- Reduce All
Domains Into One" (and Shang et al., CoRL 2024, "Theia", which distils the same way): the student gets one small MLP
"adaptor" head per teacher on its summary feature (the class token, or the pooled map) and one on its patch features;
the summary is matched by cosine distance, the patch features by a mix of cosine distance and smooth L1.

:class:`RADIOLoss` owns both heads (a :class:`~kd_lightning.losses.adapters.LazyAdapter` built from the first batch)
and takes student and teacher features of either kind: ViT tokens ``[B, P + h*w, D]`` (a timm ViT's ``norm`` output,
the tokens of ``forward_features``) or CNN maps ``[B, C, H, W]``. The student's patch features are resampled to the
teacher's grid by :class:`~kd_lightning.losses.vit_adapters.MapToTokens` (the ``map_to_tokens`` adapter, with an MLP
projection). One term per teacher layer; several teachers are several terms.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.losses._checks import (
    check_ndim,
    check_non_negative,
    check_same_batch,
    check_same_shape,
    full_precision,
)
from kd_lightning.losses.adapters import LazyAdapter
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.vit_adapters import MapToTokens, map_as_tokens, mlp_projector, token_grid, tokens_as_map

__all__ = ["RADIOLoss", "radio_loss"]


def radio_loss(
    student: Tensor,
    teacher: Tensor,
    summary_weight: float = 1.0,
    cosine_weight: float = 0.9,
    smooth_l1_weight: float = 0.1,
) -> Tensor:
    """AM-RADIO's feature-matching loss on a summary token followed by patch tokens.

    With ``s_0, t_0`` the summary (position 0) and ``s_n, t_n`` the ``N`` patch tokens (positions ``1..N``):
    ``loss = w_sum * mean_b (1 - cos(s_0, t_0)) + w_cos * mean_{b,n} (1 - cos(s_n, t_n))
    + w_l1 * mean_{b,n,d} smoothL1(s_nd - t_nd)`` (smooth L1 with ``beta = 1``). The paper's spatial loss is
    ``0.9 * cosine + 0.1 * smooth L1`` and its summary loss the cosine distance, hence the defaults.

    Args:
        student: the student's projected features ``[B, 1 + N, D]``: summary first, then patches on the teacher's grid.
        teacher: the teacher's ``[B, 1 + N, D]`` in the same layout (treated as a constant, detached).
        summary_weight: weight of the summary cosine distance, ``>= 0``.
        cosine_weight: weight of the patch cosine distance, ``>= 0``.
        smooth_l1_weight: weight of the patch smooth L1, ``>= 0``.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # a summary and one patch token
        >>> radio_loss(teacher, teacher).item()
        0.0
        >>> round(radio_loss(torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]), teacher).item(), 4)  # 1 * 1 + 0.1 * 0.5 / 2
        1.025
    """
    for name, value in (("summary_weight", summary_weight), ("cosine_weight", cosine_weight)):
        check_non_negative(name, value)
    check_non_negative("smooth_l1_weight", smooth_l1_weight)
    check_ndim(student, (3,), "radio_loss", "student")
    check_ndim(teacher, (3,), "radio_loss", "teacher")
    check_same_shape(student, teacher, "radio_loss", "use RADIOLoss, whose heads project the student onto the teacher.")
    if student.shape[1] < 2:
        raise ValueError(
            f"radio_loss expected a summary token and at least one patch token [B, 1 + N, D] but got shape "
            f"{tuple(student.shape)}; use RADIOLoss, which builds that layout from both networks' features."
        )
    with full_precision(student):
        student, teacher = student.float(), teacher.detach().float()
        distance = 1 - F.cosine_similarity(student, teacher, dim=-1)  # [B, 1 + N]
        patches = F.smooth_l1_loss(student[:, 1:], teacher[:, 1:])
        return (
            summary_weight * distance[:, 0].mean() + cosine_weight * distance[:, 1:].mean() + smooth_l1_weight * patches
        )


def _split(feature: Tensor, prefix_tokens: int | None, aspect: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``(summary [B, D], patch map [B, D, h, w])`` of tokens (the class token, or the mean patch) or of a map (its
    mean)."""
    if feature.ndim == 4:
        return feature.mean(dim=(2, 3)), feature
    prefix, h, w = token_grid(feature.shape[1], aspect, prefix_tokens)
    patches = tokens_as_map(feature, prefix, (h, w))
    return (feature[:, 0] if prefix > 0 else patches.mean(dim=(2, 3))), patches


class _RADIOHeads(nn.Module):
    """The student's adaptor heads: an MLP on the summary, a :class:`MapToTokens` (MLP) on the patch map."""

    def __init__(self, student_dim: int, teacher_dim: int, grid: tuple[int, int], hidden_dim: int) -> None:
        super().__init__()
        self.summary = mlp_projector(student_dim, teacher_dim, hidden_dim)
        self.patches = MapToTokens(student_dim, teacher_dim, grid, hidden_dim=hidden_dim)

    def forward(self, summary: Tensor, patches: Tensor) -> Tensor:
        """``[B, 1 + h*w, D_t]``: the projected summary, then the patch map resampled to the grid and projected."""
        return torch.cat([self.summary(summary).unsqueeze(1), self.patches(patches)], dim=1)


def _radio_heads(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], hidden_dim: int | None) -> _RADIOHeads:
    """LazyAdapter factory from the channels ``(D_s,)`` and the teacher's ``(D_t, h, w)``."""
    (student_dim,), (teacher_dim, h, w) = student_shape, teacher_shape
    return _RADIOHeads(student_dim, teacher_dim, (h, w), hidden_dim or max(student_dim, teacher_dim))


class RADIOLoss(DistillationLoss):
    """Module form of :func:`radio_loss`: AM-RADIO's adaptor heads and summary + patch feature matching.

    Student and teacher features are ViT tokens ``[B, P + h*w, D]`` or CNN maps ``[B, C, H, W]``. The summary is the
    class token (the first prefix token), or the mean patch/map without one; the patch features are the tokens after
    the prefix, on their grid. ``adapter`` (a :class:`~kd_lightning.losses.adapters.LazyAdapter`, built from the first
    batch) holds the heads: an MLP ``Linear -> LayerNorm -> GELU -> Linear`` from ``D_s`` to ``D_t`` on the summary,
    and on the patch map a resampling to the teacher's grid (average pooling down, bilinear up) and the same MLP per
    position. Departures from the paper: RADIO's adaptor MLPs have more inner blocks; RADIO's student is a ViT whose
    patch grid it interpolates to the teacher's, here any map or token grid is resampled.

    A frozen timm ViT teacher gives its final tokens at the module ``norm`` (``[B, 1 + h*w, D]``)::

        - class_path: kd_lightning.DistillTerm
          init_args:
            loss: {class_path: kd_lightning.losses.RADIOLoss}
            student: layer4
            teacher: norm

    Args:
        summary_weight: weight of the summary cosine distance, ``>= 0``.
        cosine_weight: weight of the patch cosine distance, ``>= 0`` (0.9 in the paper).
        smooth_l1_weight: weight of the patch smooth L1, ``>= 0`` (0.1 in the paper).
        hidden_dim: width of the MLP heads; ``None``: ``max(D_s, D_t)``.
        student_prefix_tokens: prefix tokens of student tokens; ``None`` detects 0, 1 or 2 (from the token count and
            the other side's grid: see :func:`~kd_lightning.losses.vit_adapters.token_grid`).
        teacher_prefix_tokens: the same for the teacher. Between two token sequences the teacher's grid is taken
            to be square (a map on either side gives the aspect ratio).

    Example:
        >>> loss = RADIOLoss()
        >>> student = torch.randn(2, 64, 8, 8)  # a CIFAR ResNet stage
        >>> teacher = torch.randn(2, 1 + 4 * 4, 192)  # ViT-Ti/16 tokens at 64 px
        >>> loss(student, teacher).shape
        torch.Size([])
    """

    def __init__(
        self,
        summary_weight: float = 1.0,
        cosine_weight: float = 0.9,
        smooth_l1_weight: float = 0.1,
        hidden_dim: int | None = None,
        student_prefix_tokens: int | None = None,
        teacher_prefix_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_non_negative("summary_weight", summary_weight)
        check_non_negative("cosine_weight", cosine_weight)
        check_non_negative("smooth_l1_weight", smooth_l1_weight)
        for name, value in (
            ("hidden_dim", hidden_dim),
            ("student_prefix_tokens", student_prefix_tokens),
            ("teacher_prefix_tokens", teacher_prefix_tokens),
        ):
            low = 1 if name == "hidden_dim" else 0
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ValueError(f"expected {name} to be an integer >= {low} (or None) but got {name}={value!r}.")
        self.summary_weight, self.cosine_weight, self.smooth_l1_weight = summary_weight, cosine_weight, smooth_l1_weight
        self.hidden_dim = hidden_dim
        self.student_prefix_tokens, self.teacher_prefix_tokens = student_prefix_tokens, teacher_prefix_tokens
        self.adapter = LazyAdapter(partial(_radio_heads, hidden_dim=hidden_dim))

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Project the student's summary and patches onto the teacher's and return :func:`radio_loss`."""
        check_ndim(student, (3, 4), "radio_loss", "student")
        check_ndim(teacher, (3, 4), "radio_loss", "teacher")
        check_same_batch(student, teacher)
        student, teacher = student.float(), teacher.detach().float()
        student_aspect = tuple(student.shape[2:]) if student.ndim == 4 else (1, 1)
        teacher_summary, teacher_map = _split(teacher, self.teacher_prefix_tokens, student_aspect)
        student_summary, student_map = _split(student, self.student_prefix_tokens, tuple(teacher_map.shape[2:]))
        self.adapter.build((student_map.shape[1],), tuple(teacher_map.shape[1:]), device=student.device)
        projected = self.adapter.net(student_summary, student_map)
        target_tokens = torch.cat([teacher_summary.unsqueeze(1), map_as_tokens(teacher_map)], dim=1)
        return radio_loss(projected, target_tokens, self.summary_weight, self.cosine_weight, self.smooth_l1_weight)

    def extra_repr(self) -> str:
        return (
            f"summary_weight={self.summary_weight}, cosine_weight={self.cosine_weight}, "
            f"smooth_l1_weight={self.smooth_l1_weight}, hidden_dim={self.hidden_dim}, "
            f"student_prefix_tokens={self.student_prefix_tokens}, teacher_prefix_tokens={self.teacher_prefix_tokens}"
        )
