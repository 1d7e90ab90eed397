"""Tests of DeiT's distillation losses against independent references written from facebookresearch/deit
``losses.py``: the hard loss (cross-entropy with the teacher's argmax) and the scale of the soft one against
:class:`KDLoss`.

The generic checks (gradients, dtypes, extreme inputs, errors, repr) run from ``LossTester`` on :class:`TestDeiTLosses`.
"""

from __future__ import annotations

import math

import pytest
import torch
from losses.loss_tester import BadHyperparameter, Inputs, LossCase, LossTester
from torch import Tensor

from kd_lightning.losses.deit import HardDistillationLoss, hard_distillation_loss
from kd_lightning.losses.response import KDLoss, kd_loss

# ---------------------------------------------------------------- independent references (plain python, float64)


def _log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    log_norm = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_norm for v in scaled]


def _first_argmax(row: list[float]) -> int:
    return max(range(len(row)), key=lambda c: (row[c], -c))


def ref_hard(student: Tensor, teacher: Tensor, label_smoothing: float = 0.0) -> float:
    """DeiT ``hard``: ``F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))``, the teacher's class as the
    label, smoothed as ``(1 - eps) * onehot + eps / C``, averaged over the samples."""
    total = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        label, classes, log_p = _first_argmax(t), len(s), _log_softmax(s)
        target = [(1 - label_smoothing) * (c == label) + label_smoothing / classes for c in range(classes)]
        total -= sum(q * lp for q, lp in zip(target, log_p, strict=True))
    return total / len(student)


def ref_deit_soft(student: Tensor, teacher: Tensor, tau: float) -> float:
    """DeiT ``soft``: ``kl_div(log_softmax(s / T), log_softmax(t / T), reduction='sum', log_target=True) * T * T /
    outputs_kd.numel()``: the KL(p_t || p_s) summed over samples and classes, divided by ``B * C``."""
    total = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        log_s, log_t = _log_softmax(s, tau), _log_softmax(t, tau)
        total += sum(math.exp(lt) * (lt - ls) for ls, lt in zip(log_s, log_t, strict=True))
    return total * tau * tau / student.numel()


def _logits(batch: int = 6, classes: int = 7, scale: float = 3.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, classes, generator=generator) * scale,
        torch.randn(batch, classes, generator=generator) * scale,
    )


# ---------------------------------------------------------------- the generic checks


def _inputs(seed: int) -> Inputs:
    student, teacher = _logits(seed=seed)
    return Inputs(student, teacher)


class TestDeiTLosses(LossTester):
    """The hard loss is not 0 at equality: a student equal to its teacher still has the entropy of its own argmax."""

    cases = [
        LossCase(
            "hard",
            HardDistillationLoss,
            _inputs,
            {"label_smoothing": 0.0},
            function=hard_distillation_loss,
            defaults={"label_smoothing": 0.0},
            bad_hyperparameters=(
                BadHyperparameter({"label_smoothing": -0.1}, r"label_smoothing in \[0, 1\)"),
                BadHyperparameter({"label_smoothing": 1.0}, r"label_smoothing in \[0, 1\)"),
            ),
            zero_at_equality=False,
            bf16_atol=0.05,
        ),
        LossCase(
            "hard_smoothed",
            HardDistillationLoss,
            _inputs,
            {"label_smoothing": 0.1},
            function=hard_distillation_loss,
            zero_at_equality=False,
            bf16_atol=0.05,
        ),
    ]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_function_equals_module_equals_reference(seed: int, label_smoothing: float) -> None:
    student, teacher = _logits(seed=seed)
    expected = ref_hard(student.double(), teacher.double(), label_smoothing)
    from_function = hard_distillation_loss(student.double(), teacher.double(), label_smoothing)
    from_module = HardDistillationLoss(label_smoothing)(student, teacher)
    assert from_module.dtype == torch.float32 and from_module.ndim == 0
    assert from_function.item() == pytest.approx(expected, rel=1e-6)
    assert from_module.item() == pytest.approx(expected, rel=1e-5)


def test_hard_loss_reads_only_the_teachers_argmax() -> None:
    """Any teacher with the same predicted classes gives the same loss (no temperature, no teacher confidence)."""
    student, teacher = _logits(seed=3)
    sharpened = teacher * 50 + 7.0
    assert hard_distillation_loss(student, sharpened).item() == pytest.approx(
        hard_distillation_loss(student, teacher).item(), rel=1e-6
    )
    one_hot = torch.nn.functional.one_hot(teacher.argmax(1), teacher.shape[1]).float()
    assert hard_distillation_loss(student, one_hot).item() == pytest.approx(
        hard_distillation_loss(student, teacher).item(), rel=1e-6
    )


def test_hard_loss_ties_go_to_the_first_class() -> None:
    student = torch.tensor([[0.0, 2.0, 1.0]])
    teacher = torch.tensor([[1.0, 3.0, 3.0]])  # classes 1 and 2 tie: class 1 is the label
    assert hard_distillation_loss(student, teacher).item() == pytest.approx(ref_hard(student, teacher), rel=1e-6)
    assert hard_distillation_loss(student, teacher).item() == pytest.approx(-_log_softmax([0.0, 2.0, 1.0])[1])


def test_hard_loss_ignores_the_true_labels() -> None:
    student, teacher = _logits()
    labels = torch.arange(len(student)) % student.shape[1]
    assert HardDistillationLoss()(student, teacher, labels).item() == HardDistillationLoss()(student, teacher).item()


def test_hard_loss_gradient_is_softmax_minus_the_teachers_one_hot() -> None:
    student, teacher = _logits(batch=4, classes=5)
    student.requires_grad_(True)
    hard_distillation_loss(student, teacher).backward()
    one_hot = torch.nn.functional.one_hot(teacher.argmax(1), 5).float()
    torch.testing.assert_close(student.grad, (student.softmax(1) - one_hot).detach() / 4)


@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("classes", [7, 100])
def test_kd_loss_is_deits_soft_loss_times_the_number_of_classes(tau: float, classes: int) -> None:
    """DeiT's soft loss divides by ``B * C``, KDLoss (batchmean) by ``B``: a term weight ``alpha / C`` reproduces it."""
    student, teacher = _logits(batch=5, classes=classes, seed=4)
    expected = ref_deit_soft(student.double(), teacher.double(), tau)
    assert kd_loss(student, teacher, tau).item() / classes == pytest.approx(expected, rel=1e-5)
    assert KDLoss(temperature=tau)(student, teacher).item() * (0.5 / classes) == pytest.approx(0.5 * expected, rel=1e-5)


# ---------------------------------------------------------------- errors


def test_hard_loss_rejects_other_class_counts_and_token_logits() -> None:
    with pytest.raises(ValueError, match=r"5 classes \(student\) and 7 classes \(teacher\)"):
        HardDistillationLoss()(torch.randn(4, 5), torch.randn(4, 7))
    with pytest.raises(ValueError, match="token logits"):
        hard_distillation_loss(torch.randn(2, 3, 5), torch.randn(2, 3, 5))
