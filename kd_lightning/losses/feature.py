"""Feature-based losses: the student matches the teacher's intermediate feature maps ``[B, C, H, W]``.

FitNets and VID regress the student's map onto the teacher's with a trainable adapter that the loss owns (a
:class:`~kd_lightning.losses.adapters.LazyAdapter`, built from the first batch, trained, saved in checkpoints). AT and
NST compare channel-free summaries of the maps (spatial attention, channel-kernel statistics), so the channel counts
may differ without an adapter. Where the spatial sizes differ, AT, NST and VID average-pool the larger map to the
smaller size first, as HobbitLong/RepDistiller and megvii-research/mdistiller do. Between a ViT's tokens
``[B, P + h*w, D]`` and a CNN's maps, FitNetsLoss takes the adapters of :mod:`kd_lightning.losses.vit_adapters`
(``adapter: tokens_to_map`` or ``map_to_tokens``); the other losses name them when given such a pair.

Every loss compares ONE layer pair (a ``DistillTerm`` per pair; RepDistiller sums one such loss per pair), treats the
teacher as a constant target (it is detached), computes in float32 and returns an unweighted scalar; the weight
lives in the caller's ``DistillTerm``. The reductions follow RepDistiller (``distiller_zoo``), so the CIFAR-100
weights of the CRD benchmark apply: FitNets 100, AT 1000, NST 50, VID 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.losses._checks import (
    check_ndim,
    check_positive,
    check_same_batch,
    check_same_shape,
    full_precision,
    pool_to_smaller,
)
from kd_lightning.losses.adapters import LazyAdapter, conv_regressor
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.vit_adapters import map_to_tokens, token_map_hint, tokens_to_map

__all__ = ["ATLoss", "FitNetsLoss", "NSTLoss", "VIDLoss", "at_loss", "fitnets_loss", "nst_loss", "vid_loss"]


def _check_pair(student: Tensor, teacher: Tensor, loss: str, ndims: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Validate student/teacher features of one batch and one kind; return them float32, the teacher detached.

    A ViT's tokens ``[B, N, D]`` against a CNN's map ``[B, C, H, W]`` is an error naming the adapter that converts
    them (:func:`~kd_lightning.losses.vit_adapters.token_map_hint`)."""
    hint = token_map_hint(student, teacher, loss)
    if hint is not None:
        raise ValueError(hint)
    if student.ndim == teacher.ndim == 3:
        raise ValueError(
            f"{loss} compares feature maps [B, C, H, W] (or vectors [B, D]) but got token sequences [B, N, D] on both "
            f"sides: {tuple(student.shape)} (student) and {tuple(teacher.shape)} (teacher); between two ViTs use "
            f"loss: {{class_path: kd_lightning.losses.RADIOLoss}} (summary and patch tokens through MLP heads)."
        )
    check_ndim(student, ndims, loss, "student")
    check_ndim(teacher, ndims, loss, "teacher")
    check_same_batch(student, teacher)
    if student.ndim != teacher.ndim:
        raise ValueError(
            f"{loss} expected student and teacher features of the same kind but got shapes {tuple(student.shape)} "
            f"(student) and {tuple(teacher.shape)} (teacher); tap layers that give both maps or both vectors."
        )
    return student.float(), teacher.detach().float()


def fitnets_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """FitNets hint loss: mean squared error between the (regressed) student feature and the teacher's.

    Romero, Ballas, Kahou, Chassang, Gatta, Bengio, ICLR 2015, "FitNets: Hints for Thin Deep Nets".

    ``mean((r(f_s) - f_t)^2)`` over all ``B * C * H * W`` elements, the scale of RepDistiller ``HintLoss``
    (``nn.MSELoss``) and mdistiller ``FitNet``: use with weight 100 and cross-entropy weight 1. The regressor ``r``
    lives in :class:`FitNetsLoss`; this function takes features already in the teacher's shape. Departure from the
    paper: trained jointly with the task loss (as RepDistiller), not as a separate first stage.

    Args:
        student: (regressed) student feature ``[B, C, H, W]`` or ``[B, D]``.
        teacher: teacher feature of the same shape (treated as a constant, detached).

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.ones(2, 4, 3, 3)
        >>> fitnets_loss(teacher, teacher).item()
        0.0
        >>> fitnets_loss(torch.zeros(2, 4, 3, 3), 2 * teacher).item()
        4.0
    """
    student, teacher = _check_pair(student, teacher, "fitnets_loss", (2, 4))
    check_same_shape(
        student,
        teacher,
        "fitnets_loss",
        "pass adapter=True to FitNetsLoss so its regressor maps the student onto the teacher's shape.",
    )
    return F.mse_loss(student, teacher)


TOKEN_ADAPTERS = {"tokens_to_map": tokens_to_map, "map_to_tokens": map_to_tokens}
"""FitNetsLoss's adapters between a ViT's tokens and a CNN's map (:mod:`kd_lightning.losses.vit_adapters`)."""


class FitNetsLoss(DistillationLoss):
    """Module form of :func:`fitnets_loss` with a trainable regressor; use with weight 100 (RepDistiller scale).

    Args:
        adapter: when ``True`` (default), owns ``regressor``, a :class:`~kd_lightning.losses.adapters.LazyAdapter`
            built from the first batch by :func:`~kd_lightning.losses.adapters.conv_regressor` and applied to the
            student before the MSE, as in the paper and RepDistiller (always applied, even when the shapes agree).
            It is a 1x1 conv + BN (average-pooled or upsampled to the teacher's ``H x W``), or a linear layer for
            ``[B, D]`` vectors. RepDistiller's ``ConvReg`` uses a strided/transposed/valid conv for the resize and a
            final ReLU; the ReLU is left out here so that pre-activation teacher features can be matched too.
            With ``adapter=False`` student and teacher shapes must be equal. Between a ViT and a CNN:
            ``"tokens_to_map"`` (student tokens ``[B, P + h*w, D]`` -> the teacher's map ``[B, C, H, W]``,
            :func:`~kd_lightning.losses.vit_adapters.tokens_to_map`) or ``"map_to_tokens"`` (student map -> the
            teacher's patch tokens ``[B, h*w, D]``, :func:`~kd_lightning.losses.vit_adapters.map_to_tokens`; the
            teacher's class/distillation tokens are not matched). In YAML:
            ``loss: {class_path: kd_lightning.losses.FitNetsLoss, init_args: {adapter: tokens_to_map}}``.
        prefix_tokens: the ViT side's prefix tokens (class, distillation, registers) for the token adapters; ``None``
            detects 0, 1 or 2 from the token count and the map's aspect ratio.

    Example:
        >>> loss = FitNetsLoss()
        >>> loss(torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)).shape
        torch.Size([])
        >>> [type(layer).__name__ for layer in loss.regressor.net]
        ['Conv2d', 'BatchNorm2d', 'AdaptiveAvgPool2d']
        >>> loss = FitNetsLoss(adapter="tokens_to_map")  # ViT-Ti tokens (class token + 4 x 4) -> a CIFAR ResNet map
        >>> loss(torch.randn(2, 17, 192), torch.randn(2, 64, 8, 8)).shape
        torch.Size([])
    """

    def __init__(
        self, adapter: bool | Literal["tokens_to_map", "map_to_tokens"] = True, prefix_tokens: int | None = None
    ) -> None:
        super().__init__()
        if not isinstance(adapter, bool) and adapter not in TOKEN_ADAPTERS:
            raise ValueError(
                f"expected adapter to be true, false, {' or '.join(TOKEN_ADAPTERS)} but got adapter={adapter!r}."
            )
        if prefix_tokens is not None and (isinstance(prefix_tokens, bool) or not prefix_tokens >= 0):
            raise ValueError(f"expected prefix_tokens >= 0 (or None) but got prefix_tokens={prefix_tokens!r}.")
        self.adapter, self.prefix_tokens = adapter, prefix_tokens
        if adapter in TOKEN_ADAPTERS:
            self.regressor = LazyAdapter(partial(TOKEN_ADAPTERS[adapter], prefix_tokens=prefix_tokens))
        else:
            self.regressor = LazyAdapter(conv_regressor) if adapter else None

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Regress the student (building the regressor on the first call) and return the hint loss."""
        if self.adapter in TOKEN_ADAPTERS:
            return self._token_hint(student, teacher)
        if self.regressor is not None:
            student, _ = _check_pair(student, teacher, "fitnets_loss", (2, 4))
            student = self.regressor(student, teacher)
        return fitnets_loss(student, teacher)

    def _token_hint(self, student: Tensor, teacher: Tensor) -> Tensor:
        kinds = (3, 4) if self.adapter == "tokens_to_map" else (4, 3)
        check_same_batch(student, teacher)
        if (student.ndim, teacher.ndim) != kinds:
            names = {3: "tokens [B, N, D]", 4: "a map [B, C, H, W]"}
            other = {(4, 4): "true", (3, 4): "tokens_to_map", (4, 3): "map_to_tokens"}
            pair = (student.ndim, teacher.ndim)
            fix = (
                f"use adapter: {other[pair]}"
                if pair in other
                else "tap a ViT block on one side, a CNN stage on the other"
            )
            raise ValueError(
                f"FitNetsLoss(adapter={self.adapter!r}) expected student {names[kinds[0]]} and teacher "
                f"{names[kinds[1]]} but got shapes {tuple(student.shape)} (student) and {tuple(teacher.shape)} "
                f"(teacher); {fix}."
            )
        student, teacher = student.float(), teacher.detach().float()
        student = self.regressor(student, teacher)
        if self.adapter == "map_to_tokens":
            teacher = self.regressor.net.patch_tokens(teacher)
        return F.mse_loss(student, teacher)

    def extra_repr(self) -> str:
        return f"adapter={self.adapter!r}, prefix_tokens={self.prefix_tokens}"


def _attention_map(feature: Tensor, p: float) -> Tensor:
    """``[B, H*W]`` spatial attention: ``mean_c |f|^p``, flattened and L2-normalised per sample.

    ``|f|`` is clamped to the smallest normal float32 before the power, so ``p < 1`` keeps finite gradients at exact
    zeros (post-ReLU features), where ``d|f|^p / d|f| = p * 0^(p - 1)`` is infinite; values do not change measurably.
    """
    return F.normalize(feature.abs().clamp_min(torch.finfo(torch.float32).tiny).pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student: Tensor, teacher: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer: match the L2-normalised spatial attention maps of student and teacher.

    Zagoruyko, Komodakis, ICLR 2017, "Paying More Attention to Attention: Improving the Performance of Convolutional
    Neural Networks via Attention Transfer".

    ``Q = normalize(mean_c |f|^p)`` (``[B, H*W]``); ``loss = mean (Q_s - Q_t)^2`` over all ``B * H * W`` entries, the
    scale of RepDistiller ``Attention`` and mdistiller ``AT``: use with weight 1000, ``p=2``. The channel counts may
    differ (the map is channel-averaged); when the spatial sizes differ, the larger map is average-pooled to the
    smaller one, as both implementations do (they pool to a square ``H x H``; here to the smaller ``H`` and ``W``,
    the same for square maps). The paper's ``|f|^p`` is kept (RepDistiller uses ``f^p``; equal for even ``p``).

    The mean over ``H * W`` positions of unit-norm maps makes the loss scale as ``1 / (H * W)``: weight 1000 was
    tuned on CIFAR's 32x32, 16x16 and 8x8 stage maps; on maps with ``n`` times fewer positions, ``1000 / n`` has the
    same strength (62.5 on the 8x8, 4x4 and 2x2 maps of the digits networks).

    Args:
        student: student feature map ``[B, C_s, H_s, W_s]``.
        teacher: teacher feature map ``[B, C_t, H_t, W_t]`` (treated as a constant, detached).
        p: exponent of the attention map, ``> 0``.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.ones(2, 3, 2, 2)
        >>> at_loss(torch.ones(2, 5, 2, 2), teacher).item()
        0.0
        >>> student = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(2, 5, 2, 2)
        >>> at_loss(student, teacher).item()
        0.25
    """
    check_positive("p", p)
    student, teacher = _check_pair(student, teacher, "at_loss", (4,))
    student, teacher = pool_to_smaller(student, teacher)
    return (_attention_map(student, p) - _attention_map(teacher, p)).pow(2).mean()


class ATLoss(DistillationLoss):
    """Module form of :func:`at_loss`; use with weight 1000 (RepDistiller scale).

    Args:
        p: exponent of the attention map, ``> 0`` (2 in the paper and RepDistiller).

    Example:
        >>> ATLoss()(torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)).shape
        torch.Size([])
    """

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        check_positive("p", p)
        self.p = p

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the attention-transfer loss; ``target`` is ignored."""
        return at_loss(student, teacher, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Mean of the degree-2 polynomial kernel ``(a_i . b_j)^2`` over all samples and channel pairs ``(i, j)``."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


def nst_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Neuron selectivity transfer: squared MMD between the student's and teacher's channel activation patterns.

    Huang, Wang, arXiv 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer".

    Each channel's map is flattened and L2-normalised to ``u`` (``[B, C, H*W]``); with the polynomial kernel
    ``k(u, v) = (u . v)^2``, ``loss = mean k(u_t, u_t) + mean k(u_s, u_s) - 2 mean k(u_s, u_t)``, each mean taken over
    the batch and all channel pairs (``B * C_a * C_b`` terms). This is RepDistiller ``NSTLoss`` (``full_loss=True``)
    and mdistiller ``NST``: use with weight 50. Channel counts may differ; the spatially larger map is average-pooled
    to the smaller size (to the smaller ``H`` and ``W``; RepDistiller pools to a square ``H x H``).

    Args:
        student: student feature map ``[B, C_s, H_s, W_s]``.
        teacher: teacher feature map ``[B, C_t, H_t, W_t]`` (treated as a constant, detached).

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(2, 3, 2, 2)
        >>> nst_loss(teacher, teacher).item()
        0.0
        >>> nst_loss(torch.ones(2, 4, 2, 2), teacher).item()
        1.5
    """
    student, teacher = _check_pair(student, teacher, "nst_loss", (4,))
    with full_precision(student):  # a difference of kernel means: bf16 batched products would cancel to noise
        student, teacher = pool_to_smaller(student, teacher)
        u_s = F.normalize(student.flatten(2), dim=2)
        u_t = F.normalize(teacher.flatten(2), dim=2)
        return _poly_kernel_mean(u_t, u_t) + _poly_kernel_mean(u_s, u_s) - 2 * _poly_kernel_mean(u_s, u_t)


class NSTLoss(DistillationLoss):
    """Module form of :func:`nst_loss`; use with weight 50 (RepDistiller scale).

    Example:
        >>> NSTLoss()(torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)).shape
        torch.Size([])
    """

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the NST loss; ``target`` is ignored."""
        return nst_loss(student, teacher)


def vid_loss(
    student: Tensor, teacher: Tensor, regressor: Callable[[Tensor], Tensor], log_scale: Tensor, eps: float = 1e-5
) -> Tensor:
    """Variational information distillation: Gaussian negative log-likelihood of the teacher given the student.

    Ahn, Hu, Damianou, Lawrence, Dai, CVPR 2019, "Variational Information Distillation for Knowledge Transfer".

    The student predicts the mean ``mu = regressor(f_s)`` of a Gaussian over the teacher feature with a learned
    per-channel variance ``var_c = softplus(log_scale_c) + eps``;
    ``loss = mean 0.5 * ((mu - f_t)^2 / var + log(var))`` over all ``B * C_t * H * W`` elements (the constant
    ``0.5 * log(2 pi)`` dropped), the scale of RepDistiller ``VIDLoss`` and mdistiller ``VID``: use with weight 1 and
    cross-entropy weight 1. The spatially larger map is average-pooled to the smaller size before the regressor
    (to the smaller ``H`` and ``W``; RepDistiller pools to a square ``H x H``). Vectors ``[B, D]`` are treated as
    ``[B, D, 1, 1]`` maps. The minimum over ``mu`` is ``0.5 * mean_c log(var_c)``, not zero.

    Args:
        student: student feature ``[B, C_s, H_s, W_s]`` or ``[B, D_s]``.
        teacher: teacher feature ``[B, C_t, H_t, W_t]`` or ``[B, D_t]`` (treated as a constant, detached).
        regressor: maps the (pooled) student ``[B, C_s, H, W]`` to the predicted mean ``[B, C_t, H, W]``; in
            :class:`VIDLoss` three 1x1 convolutions with ReLUs.
        log_scale: ``[C_t]`` pre-softplus variances.
        eps: lower bound added to the variance, ``> 0``.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.ones(2, 3, 2, 2)
        >>> round(vid_loss(teacher, teacher, nn.Identity(), torch.zeros(3)).item(), 4)  # 0.5 * log(softplus(0) + eps)
        -0.1832
        >>> round(vid_loss(torch.zeros(2, 3, 2, 2), teacher, nn.Identity(), torch.zeros(3)).item(), 4)
        0.5381
    """
    check_positive("eps", eps)
    student, teacher = _check_pair(student, teacher, "vid_loss", (2, 4))
    if student.ndim == 2:
        student, teacher = student[:, :, None, None], teacher[:, :, None, None]
    student, teacher = pool_to_smaller(student, teacher)
    mean = regressor(student).float()
    if mean.shape != teacher.shape or log_scale.shape != teacher.shape[1:2]:
        raise ValueError(
            f"vid_loss expected a regressor output of the teacher's shape {tuple(teacher.shape)} and a log_scale of "
            f"shape ({teacher.shape[1]},) but got {tuple(mean.shape)} and {tuple(log_scale.shape)}; use VIDLoss, "
            f"which builds both from the first batch."
        )
    var = F.softplus(log_scale.float()).view(1, -1, 1, 1) + eps
    return (0.5 * ((mean - teacher).pow(2) / var + var.log())).mean()


def _inverse_softplus(value: float) -> float:
    """``log(exp(value) - 1)``, computed stably for large values."""
    return value + math.log(-math.expm1(-value))


class _VIDAdapter(nn.Module):
    """VID's trainable part: the mean regressor (three 1x1 convs with ReLUs, no bias) and the per-channel log-scale."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, init_pred_var: float, eps: float):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((out_channels,), _inverse_softplus(init_pred_var - eps)))

    def forward(self, student: Tensor) -> Tensor:
        return self.regressor(student)


def _vid_adapter(
    student_shape: tuple[int, ...],
    teacher_shape: tuple[int, ...],
    hidden_channels: int | None,
    init_pred_var: float,
    eps: float,
) -> _VIDAdapter:
    """LazyAdapter factory: build :class:`_VIDAdapter` from the channel counts ``(C_s,)`` and ``(C_t,)``."""
    hidden = hidden_channels if hidden_channels is not None else teacher_shape[0]
    return _VIDAdapter(student_shape[0], hidden, teacher_shape[0], init_pred_var, eps)


class VIDLoss(DistillationLoss):
    """Module form of :func:`vid_loss` with its trainable regressor and variances; use with weight 1 (RepDistiller).

    Owns ``adapter``, a :class:`~kd_lightning.losses.adapters.LazyAdapter` built from the first batch's channel
    counts (so any spatial size works afterwards): ``adapter.net.regressor`` (1x1 convs ``C_s -> hidden -> hidden ->
    C_t`` with ReLUs, no bias) and ``adapter.net.log_scale`` (``[C_t]``, initialised so that every variance equals
    ``init_pred_var``). Both train and are saved in checkpoints.

    Args:
        hidden_channels: width of the regressor's hidden layers; ``None`` uses the teacher's channels ``C_t``, as
            RepDistiller (``VIDLoss(s, t, t)``).
        init_pred_var: initial variance, ``> eps``.
        eps: lower bound added to the variance, ``> 0``.

    Example:
        >>> loss = VIDLoss()
        >>> loss(torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)).shape
        torch.Size([])
        >>> loss.adapter.net.log_scale.shape
        torch.Size([16])
    """

    def __init__(self, hidden_channels: int | None = None, init_pred_var: float = 5.0, eps: float = 1e-5) -> None:
        super().__init__()
        if hidden_channels is not None and (not isinstance(hidden_channels, int) or isinstance(hidden_channels, bool)):
            raise ValueError(
                f"expected an integer hidden_channels (or None) but got hidden_channels={hidden_channels!r}; "
                f"pass e.g. 128, or None for the teacher's channels."
            )
        if hidden_channels is not None:
            check_positive("hidden_channels", hidden_channels)
        check_positive("eps", eps)
        if not init_pred_var > eps:
            raise ValueError(
                f"expected init_pred_var > eps but got init_pred_var={init_pred_var} and eps={eps}; pass a larger "
                f"init_pred_var (e.g. 5.0)."
            )
        self.hidden_channels, self.init_pred_var, self.eps = hidden_channels, init_pred_var, eps
        factory = partial(_vid_adapter, hidden_channels=hidden_channels, init_pred_var=init_pred_var, eps=eps)
        self.adapter = LazyAdapter(factory)

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Build the adapter on the first call and return the VID loss; ``target`` is ignored."""
        _check_pair(student, teacher, "vid_loss", (2, 4))
        self.adapter.build((student.shape[1],), (teacher.shape[1],), device=student.device)
        return vid_loss(student, teacher, self.adapter.net, self.adapter.net.log_scale, self.eps)

    def extra_repr(self) -> str:
        return f"hidden_channels={self.hidden_channels}, init_pred_var={self.init_pred_var}, eps={self.eps}"
