"""DeiT's hard distillation: the student learns the class the teacher predicts, as a hard label.

Touvron, Cord, Douze, Massa, Sablayrolles, Jégou, ICML 2021, "Training data-efficient image transformers &
distillation through attention" (facebookresearch/deit ``losses.py``, ``DistillationLoss``).

DeiT's three settings, as terms of an :class:`~kd_lightning.OfflineDistillation` (``alpha`` = DeiT's ``alpha``,
``tau`` its ``tau``, ``C`` the number of classes; DeiT's total is ``(1 - alpha) * CE + alpha * distillation``):

* ``none``: ``ce_weight: 1`` and no terms (:class:`~kd_lightning.Classifier`).
* ``hard`` (the paper's best): ``ce_weight: 1 - alpha`` and ``DistillTerm(HardDistillationLoss(), weight=alpha)``;
  ``alpha = 0.5`` by default.
* ``soft``: ``ce_weight: 1 - alpha`` and ``DistillTerm(KDLoss(temperature=tau), weight=alpha / C)``. DeiT divides
  the summed KL by ``outputs_kd.numel() = B * C`` where :class:`~kd_lightning.losses.KDLoss` divides by ``B``
  (``batchmean``, Hinton's and the CRD benchmark's scale; DeiT keeps ``numel`` as "the legacy PyTorch behavior",
  facebookresearch/deit issue 61), so ``KDLoss = C * DeiT soft``: DeiT's default
  ``alpha = 0.5, tau = 1`` on ImageNet is ``weight: 0.0005`` at ``temperature: 1.0``, on CIFAR-100 ``weight: 0.005``.

With a distillation token (:class:`~kd_lightning.models.deit.DistilledViT`), the term reads the distillation head,
``student: model.head_dist``, while the cross-entropy reads the class head.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.response import _check_logits

__all__ = ["HardDistillationLoss", "hard_distillation_loss"]


def _check_label_smoothing(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"expected label_smoothing in [0, 1) but got label_smoothing={value}; pass 0 (DeiT) or e.g. 0.1."
        )


def hard_distillation_loss(student: Tensor, teacher: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Hard-label distillation: cross-entropy of the student with the teacher's predicted class.

    Touvron et al., ICML 2021, "Training data-efficient image transformers & distillation through attention".

    ``y_t = argmax_c teacher[b, c]`` and the loss is ``mean_b CE(student[b], y_t[b])``
    ``= -mean_b log softmax(student[b])[y_t[b]]``, DeiT's ``F.cross_entropy(outputs_kd, teacher.argmax(dim=1))``.
    The teacher gives no gradient (argmax); ties go to the first maximal class, as ``torch.argmax``. No temperature:
    a hard label is the same at every temperature. Use with weight ``alpha = 0.5`` and cross-entropy weight
    ``1 - alpha = 0.5``, as DeiT.

    Args:
        student: student logits ``[B, C]`` (with a distillation token: the distillation head's).
        teacher: teacher logits ``[B, C]`` (treated as a constant, detached).
        label_smoothing: smoothing of the teacher's one-hot label, in ``[0, 1)``; 0 in DeiT's code.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> import torch
        >>> teacher = torch.tensor([[0.0, 5.0, 1.0]])
        >>> round(hard_distillation_loss(torch.zeros(1, 3), teacher).item(), 4)  # log 3
        1.0986
        >>> round(hard_distillation_loss(torch.tensor([[0.0, 9.0, 0.0]]), teacher).item(), 4)
        0.0002
    """
    _check_label_smoothing(label_smoothing)
    student, teacher = _check_logits(student, teacher, "hard_distillation_loss")
    return F.cross_entropy(student, teacher.argmax(dim=1), label_smoothing=label_smoothing)


class HardDistillationLoss(DistillationLoss):
    """Module form of :func:`hard_distillation_loss`; weight 0.5 with CE weight 0.5 (DeiT's ``alpha = 0.5``).

    Args:
        label_smoothing: smoothing of the teacher's one-hot label, in ``[0, 1)``; 0 in DeiT's code.

    Example:
        >>> import torch
        >>> HardDistillationLoss()(torch.randn(8, 10), torch.randn(8, 10)).shape
        torch.Size([])
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        _check_label_smoothing(label_smoothing)
        self.label_smoothing = label_smoothing

    def forward(self, student: Tensor, teacher: Tensor, target: Tensor | None = None) -> Tensor:
        """Return the hard distillation loss of logits ``[B, C]``; ``target`` (the true labels) is ignored."""
        return hard_distillation_loss(student, teacher, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
