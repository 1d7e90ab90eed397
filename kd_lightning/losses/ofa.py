"""OFA: distillation between heterogeneous architectures (CNN, ViT, MLP) in the logit space.

Hao, Guo, Chen, Han, Xu, Wang, Xu, NeurIPS 2023, "One-for-All: Bridge the Gap Between Heterogeneous Architectures in
Knowledge Distillation" (reference code: Hao840/OFAKD, ``distillers/ofa.py``).

Intermediate features of different architectures live in different spaces (a CNN's ``[B, C, H, W]`` maps, a ViT's
``[B, N, D]`` tokens), but their logits live in one. OFA adds a small branch to an intermediate student stage that
projects its feature into the logit space and trains it against the teacher's logits with :func:`ofa_loss`, a
cross-entropy whose target-class term is sharpened by an exponent ``eps``. :class:`OFALoss` owns the branch (a
:class:`~kd_lightning.losses.adapters.LazyAdapter` built from the first batch); a recipe adds one term per student
stage (``student: layer2``, ``teacher: logits``) and one on the final logits (``branch: false``), as the reference.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.losses._checks import check_ndim, check_positive, check_same_batch, check_same_shape, full_precision
from kd_lightning.losses.adapters import LazyAdapter
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.vit_adapters import token_grid

__all__ = ["OFALoss", "ofa_branch", "ofa_loss"]


def _target_mask(target: Tensor | None, like: Tensor) -> Tensor:
    """One-hot ``[B, K]`` of the labels (the argmax of soft labels, as the reference), zeros without labels."""
    if target is None:
        return torch.zeros_like(like)
    if target.ndim == 2:
        target = target.argmax(dim=-1)
    if target.ndim != 1 or target.shape[0] != like.shape[0]:
        raise ValueError(
            f"ofa_loss expected class indices [B] = [{like.shape[0]}] (or soft labels [B, K]) but got a target of "
            f"shape {tuple(target.shape)}; pass the batch's labels."
        )
    return F.one_hot(target.long(), like.shape[-1]).to(like.dtype)


def ofa_loss(
    student: Tensor, teacher: Tensor, target: Tensor | None = None, eps: float = 1.0, temperature: float = 1.0
) -> Tensor:
    """OFA's modulated KD loss between student and teacher logits.

    ``p^s = softmax(z^s / T)``, ``p^t = softmax(z^t / T)``, ``y`` the one-hot label;
    ``loss = mean_b sum_k -((p^t_k + y_k)^eps - y_k) log p^s_k``. Off the target class this is ``-(p^t_k)^eps log
    p^s_k``; on it, ``-((1 + p^t_y)^eps - 1) log p^s_y``: with ``eps > 1`` the target class is weighted up the more
    the teacher believes it. ``eps = 1`` is Hinton's KD cross-entropy (KL plus the teacher's entropy, no ``T^2``).
    Defaults follow the reference's ``train.py`` (``--ofa-eps 1``, ``--ofa-temperature 1``); its ImageNet
    CNN-student runs use ``eps = 1.5``. Without labels ``y = 0``. Log-probabilities come from ``log_softmax`` (the
    reference takes ``log(softmax)``).

    Args:
        student: student logits ``[B, K]`` (from the final head or an :class:`OFALoss` branch).
        teacher: teacher logits ``[B, K]`` (treated as a constant, detached).
        target: class indices ``[B]``, soft labels ``[B, K]`` (their argmax), or ``None``.
        eps: the modulating exponent, ``> 0``.
        temperature: softmax temperature, ``> 0``.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(ofa_loss(logits, logits).item(), 4)  # -sum 0.5 log 0.5 = log 2
        0.6931
        >>> round(ofa_loss(logits, logits, torch.tensor([0]), eps=2.0).item(), 4)  # (1.5^2 - 1 + 0.5^2) log 2
        1.0397
    """
    check_positive("eps", eps)
    check_positive("temperature", temperature)
    check_ndim(student, (2,), "ofa_loss", "student")
    check_ndim(teacher, (2,), "ofa_loss", "teacher")
    check_same_shape(student, teacher, "ofa_loss", "project intermediate features with OFALoss (branch: true).")
    with full_precision(student):
        student, teacher = student.float(), teacher.detach().float()
        log_p_student = F.log_softmax(student / temperature, dim=-1)
        p_teacher = F.softmax(teacher / temperature, dim=-1)
        mask = _target_mask(target, p_teacher)
        weight = (p_teacher + mask).pow(eps) - mask
        return -(weight * log_p_student).sum(dim=-1).mean()


class _SepConv(nn.Module):
    """OFA's ``SepConv``: two depthwise-separable 3x3 convs with BN + ReLU, the first with stride 2."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(channels_in, channels_in, 3, stride=2, padding=1, groups=channels_in, bias=False),
            nn.Conv2d(channels_in, channels_in, 1, bias=False),
            nn.BatchNorm2d(channels_in),
            nn.ReLU(),
            nn.Conv2d(channels_in, channels_in, 3, stride=1, padding=1, groups=channels_in, bias=False),
            nn.Conv2d(channels_in, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class _TokenHead(nn.Module):
    """Transformer blocks, then the class token (or the mean of the tokens without one)."""

    def __init__(self, dim: int, blocks: int, prefix_tokens: int) -> None:
        super().__init__()
        heads = next(h for h in (4, 2, 1) if dim % h == 0)  # the reference's Block(num_heads=4)
        layer = partial(
            nn.TransformerEncoderLayer, dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True
        )
        self.blocks = nn.Sequential(*(layer(norm_first=True) for _ in range(blocks)))
        self.prefix_tokens = prefix_tokens

    def forward(self, tokens: Tensor) -> Tensor:
        tokens = self.blocks(tokens)
        return tokens[:, 0] if self.prefix_tokens > 0 else tokens.mean(dim=1)


def _init_weights(module: nn.Module) -> None:
    """The reference's ``init_weights``: Kaiming (fan-out) convs, unit BN, truncated-normal (std 0.02) linears."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def ofa_branch(
    student_shape: tuple[int, ...],
    teacher_shape: tuple[int, ...],
    blocks: int = 1,
    hidden_dim: int | None = None,
    prefix_tokens: int | None = None,
) -> nn.Module:
    """LazyAdapter factory: OFA's projector from a student feature to the teacher's ``K`` logits.

    * a map ``(C, H, W)``: ``blocks`` stride-2 ``SepConv`` blocks doubling the channels (the last one to
      ``hidden_dim``; with ``blocks = 0`` a 1x1 conv to ``hidden_dim``), global average pooling, ``Linear(hidden_dim,
      K)``. The reference uses ``4 - stage`` blocks and ``hidden_dim = max(C_s, C_t)`` of the networks' last stages;
      here ``hidden_dim`` defaults to ``C * 2^blocks`` (``C`` when ``blocks = 0``).
    * tokens ``(P + h*w, D)``: ``max(blocks, 1)`` pre-norm transformer blocks (4 heads), the class token (or the mean
      token when ``P = 0``), ``Linear(D, K)``. The reference's patch merging down to a 7 x 7 grid is left out.
    * a vector ``(D,)``: ``Linear(D, K)``.
    """
    if len(teacher_shape) != 1:
        raise ValueError(
            f"OFALoss compares with the teacher's logits [B, K] but got a teacher feature of shape (B, "
            f"{', '.join(map(str, teacher_shape))}); set the term's teacher: logits."
        )
    classes = teacher_shape[0]
    if len(student_shape) == 3:
        channels = student_shape[0]
        width = hidden_dim if hidden_dim is not None else channels * 2**blocks
        stages: list[nn.Module] = [
            _SepConv(channels * 2**i, width if i == blocks - 1 else channels * 2 ** (i + 1)) for i in range(blocks)
        ] or [nn.Conv2d(channels, width, kernel_size=1)]
        head = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))
    elif len(student_shape) == 2:
        prefix = prefix_tokens if prefix_tokens is not None else token_grid(student_shape[0])[0]
        head = nn.Sequential(_TokenHead(student_shape[1], max(blocks, 1), prefix), nn.Linear(student_shape[1], classes))
    else:
        head = nn.Linear(student_shape[0], classes)
    _init_weights(head)
    return head


class OFALoss(DistillationLoss):
    """Module form of :func:`ofa_loss`, projecting an intermediate student feature into the logit space (OFA).

    The term reads an intermediate student layer and the teacher's logits::

        - class_path: kd_lightning.DistillTerm
          init_args:
            loss: {class_path: kd_lightning.losses.OFALoss, init_args: {eps: 1.5}}
            student: layer2
            teacher: logits

    Args:
        branch: own ``branch``, a :class:`~kd_lightning.losses.adapters.LazyAdapter` built from the first batch by
            :func:`ofa_branch` (maps, tokens or vectors -> ``[B, K]``); ``False`` for the term on the student's own
            logits (the reference's ``loss_kd``).
        eps: the modulating exponent, ``> 0`` (1 by default as the reference's ``train.py``; 1.5 in its ImageNet
            CNN-student commands).
        temperature: softmax temperature, ``> 0``.
        blocks: ``SepConv`` blocks (maps) or transformer blocks (tokens) of the branch: the reference uses
            ``4 - stage`` (3 after the first of four stages, 1 after the last).
        hidden_dim: the branch's width before the linear head (maps only), ``None``: ``C * 2^blocks``.
        prefix_tokens: class/distillation tokens of a token input (the branch reads the first); ``None`` detects 0, 1
            or 2 on a square patch grid.

    Example:
        >>> loss = OFALoss(blocks=2)
        >>> loss(torch.randn(4, 16, 8, 8), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])).shape
        torch.Size([])
        >>> loss.branch.net[-1]
        Linear(in_features=64, out_features=10, bias=True)
    """

    def __init__(
        self,
        branch: bool = True,
        eps: float = 1.0,
        temperature: float = 1.0,
        blocks: int = 1,
        hidden_dim: int | None = None,
        prefix_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_positive("eps", eps)
        check_positive("temperature", temperature)
        for name, value in (("blocks", blocks), ("hidden_dim", hidden_dim), ("prefix_tokens", prefix_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"expected {name} to be an integer >= 0 but got {name}={value!r}.")
        if hidden_dim == 0:
            raise ValueError("expected hidden_dim > 0 (or None) but got hidden_dim=0.")
        self.branch_enabled, self.eps, self.temperature = branch, eps, temperature
        self.blocks, self.hidden_dim, self.prefix_tokens = blocks, hidden_dim, prefix_tokens
        factory = partial(ofa_branch, blocks=blocks, hidden_dim=hidden_dim, prefix_tokens=prefix_tokens)
        self.branch = LazyAdapter(factory) if branch else None

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Project ``student`` (``[B, C, H, W]``, ``[B, N, D]`` or ``[B, D]``) to logits and return the OFA loss."""
        if self.branch is not None:
            check_same_batch(student, teacher)
            check_ndim(student, (2, 3, 4), "ofa_loss", "student")
            student = self.branch(student.float(), teacher)
        elif student.ndim != 2:
            raise ValueError(
                f"OFALoss(branch=False) compares the student's logits [B, K] with the teacher's but got a student "
                f"feature of shape {tuple(student.shape)}; pass branch: true to project it into the logit space."
            )
        return ofa_loss(student, teacher, target, self.eps, self.temperature)

    def extra_repr(self) -> str:
        return (
            f"branch={self.branch_enabled}, eps={self.eps}, temperature={self.temperature}, blocks={self.blocks}, "
            f"hidden_dim={self.hidden_dim}, prefix_tokens={self.prefix_tokens}"
        )
