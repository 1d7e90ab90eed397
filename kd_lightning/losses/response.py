"""Response-based losses: the student matches the teacher's final outputs (logits ``[B, C]``).

Every function takes raw logits, treats the teacher as a constant target (it is detached), computes in float32 and
returns an unweighted scalar; the weight lives in the caller's ``DistillTerm``. Each loss follows the scale of a
reference implementation, so the published weight (the docs' knowledge guide) means what the paper's table meant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_lightning.losses._checks import check_ndim, check_non_negative, check_positive, check_same_batch
from kd_lightning.losses.base import DistillationLoss

__all__ = ["DISTLoss", "DKDLoss", "KDLoss", "LSKDLoss", "dist_loss", "dkd_loss", "kd_loss", "ls_kd_loss"]


def _check_logits(student: Tensor, teacher: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Validate ``[B, C]`` logits of equal shape; return them as float32 with the teacher detached."""
    if student.ndim == 3 or teacher.ndim == 3:
        role, tokens = ("student", student) if student.ndim == 3 else ("teacher", teacher)
        raise ValueError(
            f"{loss} expected a 2-d {role} tensor of class logits [B, C] but got token logits {tuple(tokens.shape)} "
            f"[B, L, V] (a language model); use a token-level loss, which reads the real tokens of each sequence: "
            f"kd_lightning.losses.ForwardKLLoss (Hinton's KD per token), ReverseKLLoss, GeneralizedJSDLoss, "
            f"SkewKLLoss, TVDLoss."
        )
    check_ndim(student, (2,), loss, "student")
    check_ndim(teacher, (2,), loss, "teacher")
    check_same_batch(student, teacher)
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"{loss} expected student and teacher logits over the same classes but got {student.shape[1]} classes "
            f"(student) and {teacher.shape[1]} classes (teacher); give both networks the same number of outputs."
        )
    return student.float(), teacher.detach().float()


def _check_classes(logits: Tensor, loss: str, why: str) -> None:
    """Raise unless the logits hold at least two classes."""
    if logits.shape[1] < 2:
        raise ValueError(f"{loss} expected logits over at least 2 classes but got {logits.shape[1]}; {why}.")


def _check_target(target: Tensor | None, logits: Tensor, loss: str) -> Tensor:
    """Validate integer class labels ``[B]`` for the batch of ``logits``."""
    if target is None:
        raise ValueError(
            f"{loss} needs the ground-truth labels but got target=None (a label-free batch); call it as (student, "
            f"teacher, target), or use a loss that needs no labels (KDLoss, DISTLoss) on a label-free transfer set."
        )
    if target.shape != logits.shape[:1] or target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"{loss} expected integer class labels of shape ({logits.shape[0]},) but got a {target.dtype} tensor of "
            f"shape {tuple(target.shape)}; pass class indices, not one-hot or soft labels."
        )
    if bool((target < 0).any()):
        raise ValueError(
            f"{loss} needs every sample's label but the batch has unlabelled samples (label -100); use a loss that "
            f"needs no labels (KDLoss, DISTLoss) on a mixed transfer set."
        )
    return target.long()


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 4.0) -> Tensor:
    """Soft-target knowledge distillation loss.

    Hinton, Vinyals, Dean, NIPS Deep Learning Workshop 2015, "Distilling the Knowledge in a Neural Network".

    ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, summed over classes and averaged over the batch
    (``batchmean``). Scale of RepDistiller ``DistillKL`` and mdistiller ``KD``: use with weight 0.9 and a
    cross-entropy weight of 0.1 at ``T=4``.

    Args:
        student: student logits ``[B, C]``.
        teacher: teacher logits ``[B, C]`` (treated as a constant, detached).
        temperature: softmax temperature ``T > 0``.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0]])
        >>> kd_loss(logits, logits).item()
        0.0
        >>> round(kd_loss(torch.zeros(1, 3), logits).item(), 4)
        0.7245
    """
    check_positive("temperature", temperature)
    student, teacher = _check_logits(student, teacher, "kd_loss")
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def _dkd_log_probs(logits: Tensor, target: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Return DKD's two distributions as log-probabilities.

    ``binary`` ``[B, 2]``: (target class, all other classes) under ``softmax(z / T)``; ``rest`` ``[B, C - 1]``:
    ``softmax`` over the non-target classes alone. The non-target columns are gathered by index, which keeps
    the computation free of host synchronisation (unlike boolean masking).
    """
    others = torch.arange(logits.shape[1] - 1, device=logits.device).expand(logits.shape[0], -1)
    others = others + (others >= target[:, None]).long()
    log_p = F.log_softmax(logits / temperature, dim=1)
    binary = torch.cat([log_p.gather(1, target[:, None]), log_p.gather(1, others).logsumexp(1, keepdim=True)], dim=1)
    rest = F.log_softmax(logits.gather(1, others) / temperature, dim=1)
    return binary, rest


def dkd_loss(
    student: Tensor, teacher: Tensor, target: Tensor, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0
) -> Tensor:
    """Decoupled knowledge distillation: target-class KD (TCKD) plus non-target-class KD (NCKD).

    Zhao, Cui, Song, Qiu, Liang, CVPR 2022, "Decoupled Knowledge Distillation".

    With ``p = softmax(z / T)`` and ``g`` a sample's ground-truth class,
    ``TCKD = KL([p_t[g], 1 - p_t[g]] || [p_s[g], 1 - p_s[g]])`` and
    ``NCKD = KL(softmax(t[c != g] / T) || softmax(s[c != g] / T))``; the loss is
    ``T**2 / B * sum_b (alpha * TCKD_b + beta * NCKD_b)`` (summed over the batch, divided by the batch size), the scale
    of mdistiller ``DKD.py``. Use with weight 1 and cross-entropy weight 1, as mdistiller. The paper's warm-up
    ``min(epoch / 20, 1)`` is not inside this loss: ramp the caller's ``DistillTerm`` weight over 20 epochs.

    Departure from mdistiller (same values, sturdier numerics): the binary probabilities are taken in log space
    (``logsumexp`` of the non-target log-probabilities) rather than as ``log`` of summed probabilities, and NCKD drops
    the target column rather than shifting it by ``-1000``. Both agree with mdistiller to float precision while the
    logit range over ``T`` stays well below 1000, and stay finite and exact beyond, where mdistiller gives ``inf``.

    Args:
        student: student logits ``[B, C]``, ``C >= 2``.
        teacher: teacher logits ``[B, C]`` (treated as a constant, detached).
        target: ground-truth class indices ``[B]`` (integer).
        alpha: weight of TCKD, ``>= 0``.
        beta: weight of NCKD, ``>= 0`` (8 for most CIFAR-100 pairs, 2 for resnet56->resnet20, 6 for WRN/VGG pairs).
        temperature: softmax temperature ``T > 0``.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> logits, target = torch.tensor([[3.0, 1.0, -1.0]]), torch.tensor([0])
        >>> dkd_loss(logits, logits, target).item()
        0.0
        >>> round(dkd_loss(torch.zeros(1, 3), logits, target).item(), 4)
        4.8939
    """
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)
    check_positive("temperature", temperature)
    student, teacher = _check_logits(student, teacher, "dkd_loss")
    _check_classes(student, "dkd_loss", "DKD separates the target class from the other classes")
    target = _check_target(target, student, "dkd_loss")
    binary_s, rest_s = _dkd_log_probs(student, target, temperature)
    binary_t, rest_t = _dkd_log_probs(teacher, target, temperature)
    tckd = F.kl_div(binary_s, binary_t, reduction="sum", log_target=True)
    nckd = F.kl_div(rest_s, rest_t, reduction="sum", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2 / student.shape[0]


def _pearson_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 - mean_rows pearson(a_row, b_row)``, with DIST's ``eps`` added to the product of norms."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    correlation = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1 - correlation.mean()


def dist_loss(
    student: Tensor, teacher: Tensor, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0
) -> Tensor:
    """DIST: match the relations of the teacher's predictions (Pearson correlation) rather than their values.

    Huang, You, Wang, Qian, Xu, NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher".

    With ``Y = softmax(z / tau)`` ``[B, C]`` and ``d(u, v) = 1 - pearson(u, v)``:
    ``inter = mean_b d(Y_s[b, :], Y_t[b, :])`` (relations between classes, per sample),
    ``intra = mean_c d(Y_s[:, c], Y_t[:, c])`` (relations between samples, per class), and the loss is
    ``tau**2 * (beta * inter + gamma * intra)``, as the official implementation (hunto/DIST_KD, ``eps=1e-8``). Use
    with weight 1 and cross-entropy weight 1, as the paper.

    The intra-class term needs a batch of at least two samples: with ``B = 1`` it is constant (1). For identical
    student and teacher the loss is ``~0`` but not exactly 0 (``eps``), and 2 when every probability row is uniform.

    Args:
        student: student logits ``[B, C]``.
        teacher: teacher logits ``[B, C]`` (treated as a constant, detached).
        beta: weight of the inter-class relation, ``>= 0``.
        gamma: weight of the intra-class relation, ``>= 0``.
        temperature: softmax temperature ``tau > 0``.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[3.0, 1.0, -1.0], [0.0, 2.0, 1.0]])
        >>> round(dist_loss(teacher, teacher).item(), 4)
        0.0
        >>> round(dist_loss(2 * teacher, teacher).item(), 4)
        0.0081
    """
    check_non_negative("beta", beta)
    check_non_negative("gamma", gamma)
    check_positive("temperature", temperature)
    student, teacher = _check_logits(student, teacher, "dist_loss")
    y_s = F.softmax(student / temperature, dim=1)
    y_t = F.softmax(teacher / temperature, dim=1)
    inter = _pearson_distance(y_s, y_t)
    intra = _pearson_distance(y_s.t(), y_t.t())
    return temperature**2 * (beta * inter + gamma * intra)


def _standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row: ``(z - mean(z)) / (eps + std(z))``, unbiased std, as the official LS-KD code."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.var(dim=1, keepdim=True).clamp_min(1e-30).sqrt()
    return (logits - mean) / (eps + std)


def ls_kd_loss(student: Tensor, teacher: Tensor, temperature: float = 2.0) -> Tensor:
    """KD on z-score standardised logits (logit standardisation).

    Sun, Ren, Li, Wang, Cao, CVPR 2024, "Logit Standardization in Knowledge Distillation".

    ``Z(z) = (z - mean(z)) / (1e-7 + std(z))`` per sample over the classes (unbiased std), then
    ``T**2 * KL(softmax(Z(teacher) / T) || softmax(Z(student) / T))`` averaged over the batch, exactly as the
    official code (sunshangquan/logit-standardization-KD, mdistiller ``KD.py`` with ``logit_stand``). Use with its
    defaults: ``T=2`` (the "base temperature"), weight 9 and cross-entropy weight 0.1.

    The std is computed as ``sqrt(max(var, 1e-30))`` so constant logits give a zero gradient rather than NaN; this
    changes no value beyond float precision.

    Args:
        student: student logits ``[B, C]``, ``C >= 2``.
        teacher: teacher logits ``[B, C]`` (treated as a constant, detached).
        temperature: base temperature ``T > 0`` applied after standardisation.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[3.0, 1.0, -1.0]])
        >>> round(ls_kd_loss(10 * teacher + 5, teacher).item(), 4)
        0.0
        >>> round(ls_kd_loss(torch.tensor([[1.0, 3.0, -1.0]]), teacher).item(), 4)
        0.3986
    """
    check_positive("temperature", temperature)
    student, teacher = _check_logits(student, teacher, "ls_kd_loss")
    _check_classes(student, "ls_kd_loss", "standardising needs a std over at least two logits")
    return kd_loss(_standardize(student), _standardize(teacher), temperature)


class KDLoss(DistillationLoss):
    """Module form of :func:`kd_loss`; weight 0.9 with CE weight 0.1 (RepDistiller / mdistiller scale).

    Args:
        temperature: softmax temperature ``T > 0`` (4 in the CIFAR-100 recipe).

    Example:
        >>> KDLoss(temperature=4.0)(torch.randn(8, 10), torch.randn(8, 10)).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the KD loss of logits ``[B, C]``; ``target`` is ignored."""
        return kd_loss(student, teacher, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class DKDLoss(DistillationLoss):
    """Module form of :func:`dkd_loss`; weight 1 with CE weight 1, ramped over 20 epochs (mdistiller scale).

    Args:
        alpha: weight of TCKD, ``>= 0``.
        beta: weight of NCKD, ``>= 0``.
        temperature: softmax temperature ``T > 0``.

    Example:
        >>> DKDLoss()(torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))).shape
        torch.Size([])
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        check_non_negative("alpha", alpha)
        check_non_negative("beta", beta)
        check_positive("temperature", temperature)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the DKD loss of logits ``[B, C]``; ``target`` (class indices ``[B]``) is required."""
        target = _check_target(target, student, "DKDLoss")
        return dkd_loss(student, teacher, target, self.alpha, self.beta, self.temperature)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}"


class DISTLoss(DistillationLoss):
    """Module form of :func:`dist_loss`; weight 1 with CE weight 1 (official DIST scale).

    Args:
        beta: weight of the inter-class relation, ``>= 0``.
        gamma: weight of the intra-class relation, ``>= 0``.
        temperature: softmax temperature ``tau > 0``.

    Example:
        >>> DISTLoss()(torch.randn(8, 10), torch.randn(8, 10)).shape
        torch.Size([])
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        check_non_negative("beta", beta)
        check_non_negative("gamma", gamma)
        check_positive("temperature", temperature)
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the DIST loss of logits ``[B, C]``; ``target`` is ignored."""
        return dist_loss(student, teacher, self.beta, self.gamma, self.temperature)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, temperature={self.temperature}"


class LSKDLoss(DistillationLoss):
    """Module form of :func:`ls_kd_loss`; weight 9 with CE weight 0.1 at ``T=2`` (official LS-KD scale).

    Args:
        temperature: base temperature ``T > 0`` applied after standardisation.

    Example:
        >>> LSKDLoss()(torch.randn(8, 10), torch.randn(8, 10)).shape
        torch.Size([])
    """

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the LS-KD loss of logits ``[B, C]``; ``target`` is ignored."""
        return ls_kd_loss(student, teacher, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
