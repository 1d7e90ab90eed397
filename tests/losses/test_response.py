"""Tests of the response-based losses against independent per-sample references written from the papers' formulas.

The generic checks (zero at equality, gradients, dtypes, extreme inputs, errors, repr) run from ``LossTester``
(``loss_tester.py``) on the cases of :class:`TestResponseLosses`; this file holds the references and the edge cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from losses.loss_tester import BadHyperparameter, Inputs, LossCase, LossTester
from torch import Tensor, nn

from kd_lightning.losses.response import (
    DISTLoss,
    DKDLoss,
    KDLoss,
    LSKDLoss,
    dist_loss,
    dkd_loss,
    kd_loss,
    ls_kd_loss,
)

# ---------------------------------------------------------------- independent references (plain python, float64)


def _log_softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [v / temperature for v in row]
    top = max(scaled)
    log_norm = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_norm for v in scaled]


def _kl(log_p: list[float], log_q: list[float]) -> float:
    """KL(p || q) from log-probabilities."""
    return sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q, strict=True))


def ref_kd(student: Tensor, teacher: Tensor, temperature: float) -> float:
    """Hinton et al.: T^2 * KL(p_t || p_s), averaged over samples (RepDistiller/mdistiller scale)."""
    total = 0.0
    for s, t in zip(student.tolist(), teacher.tolist(), strict=True):
        total += _kl(_log_softmax(t, temperature), _log_softmax(s, temperature))
    return total / len(student) * temperature**2


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _tckd_nckd(s: list[float], t: list[float], g: int, temperature: float) -> tuple[float, float]:
    """Per-sample TCKD and NCKD of Zhao et al. 2022, eq. (1)-(4), in log space so huge logits stay exact."""
    log_p_s, log_p_t = _log_softmax(s, temperature), _log_softmax(t, temperature)
    others = [c for c in range(len(s)) if c != g]
    binary_s = [log_p_s[g], _logsumexp([log_p_s[c] for c in others])]
    binary_t = [log_p_t[g], _logsumexp([log_p_t[c] for c in others])]
    tckd = _kl(binary_t, binary_s)
    nckd = _kl(_log_softmax([t[c] for c in others], temperature), _log_softmax([s[c] for c in others], temperature))
    return tckd, nckd


def ref_dkd(student: Tensor, teacher: Tensor, target: Tensor, alpha: float, beta: float, temperature: float) -> float:
    """mdistiller scale: sum over samples of (alpha * TCKD + beta * NCKD), times T^2, divided by B."""
    total = 0.0
    for s, t, g in zip(student.tolist(), teacher.tolist(), target.tolist(), strict=True):
        tckd, nckd = _tckd_nckd(s, t, g, temperature)
        total += alpha * tckd + beta * nckd
    return total * temperature**2 / len(student)


def _pearson(u: list[float], v: list[float], eps: float = 1e-8) -> float:
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    cov = sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True))
    norm_u = math.sqrt(sum((a - mu) ** 2 for a in u))
    norm_v = math.sqrt(sum((b - mv) ** 2 for b in v))
    return cov / (norm_u * norm_v + eps)


def ref_dist(student: Tensor, teacher: Tensor, beta: float, gamma: float, temperature: float) -> float:
    """Huang et al. 2022: tau^2 * (beta * (1 - mean row Pearson) + gamma * (1 - mean column Pearson))."""
    y_s = [[math.exp(v) for v in _log_softmax(row, temperature)] for row in student.tolist()]
    y_t = [[math.exp(v) for v in _log_softmax(row, temperature)] for row in teacher.tolist()]
    inter = 1 - sum(_pearson(a, b) for a, b in zip(y_s, y_t, strict=True)) / len(y_s)
    columns = range(len(y_s[0]))
    intra = 1 - sum(_pearson([r[c] for r in y_s], [r[c] for r in y_t]) for c in columns) / len(columns)
    return temperature**2 * (beta * inter + gamma * intra)


def _zscore(row: list[float], eps: float = 1e-7) -> list[float]:
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (eps + std) for v in row]


def ref_ls_kd(student: Tensor, teacher: Tensor, temperature: float) -> float:
    """Sun et al. 2024: KD at temperature T on per-sample z-scored logits (unbiased std, eps 1e-7)."""
    z_s = torch.tensor([_zscore(row) for row in student.tolist()], dtype=torch.float64)
    z_t = torch.tensor([_zscore(row) for row in teacher.tolist()], dtype=torch.float64)
    return ref_kd(z_s, z_t, temperature)


# ---------------------------------------------------------------- one table drives the reference tests


@dataclass
class Case:
    name: str
    function: Callable[..., Tensor]
    module: type[nn.Module]
    reference: Callable[..., float]
    kwargs: dict = field(default_factory=dict)
    needs_target: bool = False
    zero_atol: float = 1e-5

    def call_function(self, student: Tensor, teacher: Tensor, target: Tensor) -> Tensor:
        if self.needs_target:
            return self.function(student, teacher, target, **self.kwargs)
        return self.function(student, teacher, **self.kwargs)

    def call_reference(self, student: Tensor, teacher: Tensor, target: Tensor) -> float:
        if self.needs_target:
            return self.reference(student.double(), teacher.double(), target, **self.kwargs)
        return self.reference(student.double(), teacher.double(), **self.kwargs)


CASES = [
    Case("kd", kd_loss, KDLoss, ref_kd, {"temperature": 4.0}),
    Case("kd_t1", kd_loss, KDLoss, ref_kd, {"temperature": 1.0}),
    Case("dkd", dkd_loss, DKDLoss, ref_dkd, {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}, needs_target=True),
    Case("dkd_mixed", dkd_loss, DKDLoss, ref_dkd, {"alpha": 0.5, "beta": 2.0, "temperature": 2.0}, needs_target=True),
    Case("dist", dist_loss, DISTLoss, ref_dist, {"beta": 1.0, "gamma": 1.0, "temperature": 1.0}),
    # float32 rounding of a correlation ~1, times tau**2 * (beta + gamma) = 40
    Case("dist_t4", dist_loss, DISTLoss, ref_dist, {"beta": 2.0, "gamma": 0.5, "temperature": 4.0}, zero_atol=4e-5),
    Case("ls_kd", ls_kd_loss, LSKDLoss, ref_ls_kd, {"temperature": 2.0}),
    Case("ls_kd_t3", ls_kd_loss, LSKDLoss, ref_ls_kd, {"temperature": 3.0}),
]
DEFAULT_CASES = [case for case in CASES if case.name in {"kd", "dkd", "dist", "ls_kd"}]


def _ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


def _logits(batch: int = 6, classes: int = 7, scale: float = 3.0, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=generator) * scale
    teacher = torch.randn(batch, classes, generator=generator) * scale
    target = torch.randint(0, classes, (batch,), generator=generator)
    return student, teacher, target


def _module_loss(case: Case, student: Tensor, teacher: Tensor, target: Tensor) -> Tensor:
    return case.module(**case.kwargs)(student, teacher, target)


# ---------------------------------------------------------------- the generic checks

TEMPERATURE = BadHyperparameter({"temperature": 0.0}, "temperature > 0")
BAD_HYPERPARAMETERS = {
    "kd": (TEMPERATURE, BadHyperparameter({"temperature": -1.0}, "temperature > 0")),
    "dkd": (
        BadHyperparameter({"alpha": -1.0}, "alpha >= 0"),
        BadHyperparameter({"beta": -0.5}, "beta >= 0"),
        TEMPERATURE,
        BadHyperparameter({"alpha": float("inf")}, "finite alpha >= 0"),
    ),
    "dist": (
        BadHyperparameter({"beta": -1.0}, "beta >= 0"),
        BadHyperparameter({"gamma": -1.0}, "gamma >= 0"),
        BadHyperparameter({"temperature": float("nan")}, "temperature > 0"),
    ),
    "ls_kd": (
        BadHyperparameter({"temperature": -2.0}, "temperature > 0"),
        BadHyperparameter({"temperature": float("inf")}, "finite temperature > 0"),
    ),
}


def _inputs(needs_target: bool) -> Callable[[int], Inputs]:
    def inputs(seed: int) -> Inputs:
        student, teacher, target = _logits(seed=seed)
        return Inputs(student, teacher, {"target": target} if needs_target else {})

    return inputs


def _loss_case(case: Case) -> LossCase:
    main = case in DEFAULT_CASES
    return LossCase(
        case.name,
        case.module,
        _inputs(case.needs_target),
        case.kwargs,
        function=case.function,
        defaults=case.kwargs if main else {},  # the defaults are the values of references.md
        bad_hyperparameters=BAD_HYPERPARAMETERS[case.name] if main else (),
        zero_atol=case.zero_atol,
        bf16_atol=0.02,
    )


class TestResponseLosses(LossTester):
    """KD, DKD and LS-KD are 0 at equality; DIST is ~0 only (its eps keeps the Pearson correlation just below 1)."""

    cases = [_loss_case(case) for case in CASES]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_function_equals_module_equals_reference(case: Case, seed: int) -> None:
    student, teacher, target = _logits(seed=seed)
    from_function = case.call_function(student.double(), teacher.double(), target)
    from_module = _module_loss(case, student, teacher, target)
    expected = case.call_reference(student, teacher, target)
    assert from_module.dtype == torch.float32 and from_module.ndim == 0
    assert from_function.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert from_module.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_dist_is_not_zero_for_uniform_predictions() -> None:
    """Constant logits give uniform rows with no variance: Pearson is 0/eps = 0, so each relation costs 1."""
    logits = torch.full((4, 5), 2.0)
    assert dist_loss(logits, logits).item() == pytest.approx(2.0)


def test_ls_kd_ignores_logit_shift_and_scale() -> None:
    """The point of logit standardisation: a student matching up to per-sample affine maps has ~0 loss."""
    _, teacher, _ = _logits()
    scale, shift = torch.linspace(0.5, 20.0, 6)[:, None], torch.linspace(-30.0, 30.0, 6)[:, None]
    shifted = teacher * scale + shift
    assert ls_kd_loss(shifted, teacher).item() == pytest.approx(0.0, abs=1e-5)
    assert kd_loss(shifted, teacher).item() > 0.1


# ---------------------------------------------------------------- DKD decomposition


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_decomposition_reconstructs_kd_per_sample(temperature: float) -> None:
    """Zhao et al. eq. (5): KD = TCKD + (1 - p_t[g]) * NCKD for every sample, and DKD averages samples."""
    student, teacher, target = _logits(batch=5, seed=3)
    per_sample = []
    for b in range(5):
        s, t, g = student[b : b + 1], teacher[b : b + 1], target[b : b + 1]
        tckd = dkd_loss(s, t, g, alpha=1.0, beta=0.0, temperature=temperature).item()
        nckd = dkd_loss(s, t, g, alpha=0.0, beta=1.0, temperature=temperature).item()
        ref_tckd, ref_nckd = _tckd_nckd(s[0].tolist(), t[0].tolist(), int(g), temperature)
        assert tckd == pytest.approx(ref_tckd * temperature**2, rel=1e-5, abs=1e-6)
        assert nckd == pytest.approx(ref_nckd * temperature**2, rel=1e-5, abs=1e-6)
        p_t_gt = torch.softmax(t[0] / temperature, dim=0)[g].item()
        assert kd_loss(s, t, temperature).item() == pytest.approx(tckd + (1 - p_t_gt) * nckd, rel=1e-4, abs=1e-5)
        per_sample.append(dkd_loss(s, t, g, alpha=1.0, beta=8.0, temperature=temperature).item())
    batch = dkd_loss(student, teacher, target, alpha=1.0, beta=8.0, temperature=temperature).item()
    assert batch == pytest.approx(sum(per_sample) / 5, rel=1e-5)


def test_dkd_module_requires_target() -> None:
    student, teacher, _ = _logits()
    with pytest.raises(ValueError, match="target=None"):
        DKDLoss()(student, teacher)


@pytest.mark.parametrize(
    "bad_target", [torch.zeros(6, 7, dtype=torch.long), torch.zeros(5, dtype=torch.long), torch.zeros(6)]
)
def test_dkd_rejects_malformed_target(bad_target: Tensor) -> None:
    student, teacher, _ = _logits()
    with pytest.raises(ValueError, match="integer class labels of shape"):
        DKDLoss()(student, teacher, bad_target)


# ---------------------------------------------------------------- huge logits


def test_dkd_stays_exact_where_a_minus_1000_mask_would_fail() -> None:
    """Logit ranges over T beyond 1000: the reference (exact, log-space) still agrees with dkd_loss."""
    student, teacher, target = _logits(batch=3, classes=4, scale=3000.0, seed=5)
    expected = ref_dkd(student.double(), teacher.double(), target, 1.0, 8.0, 4.0)
    assert math.isfinite(expected)
    assert dkd_loss(student, teacher, target).item() == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=_ids(DEFAULT_CASES))
def test_class_count_mismatch_names_both_counts(case: Case) -> None:
    student, teacher, target = torch.randn(4, 5), torch.randn(4, 7), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"5 classes \(student\) and 7 classes \(teacher\)"):
        _module_loss(case, student, teacher, target)
    with pytest.raises(ValueError, match=r"5 classes \(student\) and 7 classes \(teacher\)"):
        case.call_function(student, teacher, target)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=_ids(DEFAULT_CASES))
def test_non_2d_logits_rejected(case: Case) -> None:
    with pytest.raises(ValueError, match="2-d student"):
        _module_loss(case, torch.randn(4, 5, 2), torch.randn(4, 5, 2), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    ("module", "function", "kwargs"),
    [(DKDLoss, dkd_loss, {"target": torch.zeros(3, dtype=torch.long)}), (LSKDLoss, ls_kd_loss, {})],
    ids=["dkd", "ls_kd"],
)
def test_single_class_rejected(module: type[nn.Module], function: Callable[..., Tensor], kwargs: dict) -> None:
    with pytest.raises(ValueError, match="at least 2 classes but got 1"):
        function(torch.randn(3, 1), torch.randn(3, 1), **kwargs)
    with pytest.raises(ValueError, match="at least 2 classes but got 1"):
        module()(torch.randn(3, 1), torch.randn(3, 1), kwargs.get("target"))
