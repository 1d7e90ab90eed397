"""The token losses on ``-inf`` logits (vocabulary padding, constrained decoding): the convention ``0 * log 0 = 0``.

The reference is written from the formulas in float64, with the convention spelled out: a term ``p_v * log(p_v /
q_v)`` is 0 where ``p_v = 0`` and ``+inf`` where ``p_v > 0 = q_v``. Only the entries with ``p_v > 0`` are ever put
through a logarithm (boolean indexing), so its autograd gradient is finite wherever its value is. Each loss must give
the reference's value and, where it is finite, the reference's gradient: finite, and 0 at the excluded entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import Tensor

from kd_lightning.losses.token import (
    forward_kl_loss,
    generalized_jsd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    token_cross_entropy,
    total_variation_loss,
)

INF = math.inf

# ---------------------------------------------------------------- the reference (float64, 0 * log 0 = 0 spelled out)


def _probs(logits: Tensor, temperature: float) -> Tensor:
    """``softmax(z / T)`` of one token's logits ``[V]``: ``exp(-inf) = 0`` for an excluded entry."""
    scaled = logits / temperature
    e = torch.exp(scaled - scaled.max())
    return e / e.sum()


def _kl(p: Tensor, q: Tensor) -> Tensor:
    """``KL(p || q) = sum_v p_v log(p_v / q_v)`` over the entries with ``p_v > 0`` only (``0 * log 0 = 0``)."""
    kept = p > 0
    return (p[kept] * (p[kept].log() - q[kept].log())).sum()


def _jsd(ps: Tensor, pt: Tensor, beta: float) -> Tensor:
    if beta == 0:
        return _kl(pt, ps)
    if beta == 1:
        return _kl(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)


TokenTerm = Callable[[Tensor, Tensor], Tensor]
"""``(p_s [V], p_t [V]) -> the per-token loss`` (float64, differentiable in ``p_s``)."""


def reference(
    term: TokenTerm, student: Tensor, teacher: Tensor, mask: Tensor, temperature: float, scale: float
) -> tuple[float, Tensor]:
    """``scale / #selected * sum_{(b, l) selected} term(p_s, p_t)`` and its gradient w.r.t. the student's logits."""
    leaf = student.double().requires_grad_(True)
    terms = [
        term(_probs(leaf[b, t], temperature), _probs(teacher[b, t].double(), temperature))
        for b, t in mask.nonzero().tolist()
    ]
    value = scale * torch.stack(terms).sum() / max(len(terms), 1)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.item(), grad


@dataclass(frozen=True)
class Loss:
    name: str
    function: Callable[..., Tensor]
    term: TokenTerm
    kwargs: dict = field(default_factory=dict)
    kl_family: bool = True  # scaled by T**2
    finite_if_only_student_excludes: bool = True
    finite_if_only_teacher_excludes: bool = True


def _skew(skew: float) -> TokenTerm:
    return lambda ps, pt: _kl(pt, skew * pt + (1 - skew) * ps)


def _skew_reverse(skew: float) -> TokenTerm:
    return lambda ps, pt: _kl(ps, skew * ps + (1 - skew) * pt)


LOSSES = [
    Loss("forward_kl", forward_kl_loss, lambda ps, pt: _kl(pt, ps), finite_if_only_student_excludes=False),
    Loss("reverse_kl", reverse_kl_loss, lambda ps, pt: _kl(ps, pt), finite_if_only_teacher_excludes=False),
    Loss("jsd_0", generalized_jsd_loss, lambda ps, pt: _jsd(ps, pt, 0.0), {"beta": 0.0}, True, False, True),
    *(
        Loss(f"jsd_{beta}", generalized_jsd_loss, lambda ps, pt, beta=beta: _jsd(ps, pt, beta), {"beta": beta})
        for beta in (0.1, 0.5, 0.9)
    ),
    Loss("jsd_1", generalized_jsd_loss, lambda ps, pt: _jsd(ps, pt, 1.0), {"beta": 1.0}, True, True, False),
    Loss("skew_0", skew_kl_loss, _skew(0.0), {"skew": 0.0}, finite_if_only_student_excludes=False),
    Loss("skew_0.1", skew_kl_loss, _skew(0.1), {"skew": 0.1}),
    Loss("skew_reverse_0", skew_reverse_kl_loss, _skew_reverse(0.0), {"skew": 0.0}, True, True, False),
    Loss("skew_reverse_0.1", skew_reverse_kl_loss, _skew_reverse(0.1), {"skew": 0.1}),
    Loss("tvd", total_variation_loss, lambda ps, pt: 0.5 * (pt - ps).abs().sum(), kl_family=False),
]
IDS = [loss.name for loss in LOSSES]

# ---------------------------------------------------------------- logits with excluded entries


def _logits(seed: int = 0, batch: int = 2, length: int = 4, vocab: int = 7) -> tuple[Tensor, Tensor, Tensor]:
    """Student and teacher logits ``[B, L, V]`` sharing their ``-inf`` entries, and a padding mask ``[B, L]``.

    Both models exclude the last entry (vocabulary padding) and a random further entry per position (constrained
    decoding); the padded positions (outside the mask) are ``-inf`` everywhere, which no loss may read.
    """
    generator = torch.Generator().manual_seed(seed)
    student = 3 * torch.randn(batch, length, vocab, generator=generator)
    teacher = 3 * torch.randn(batch, length, vocab, generator=generator)
    excluded = torch.zeros(batch, length, vocab, dtype=torch.bool)
    excluded[..., -1] = True
    excluded.scatter_(2, torch.randint(0, vocab - 1, (batch, length, 1), generator=generator), True)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[-1, -2:] = False
    excluded[~mask] = True
    return student.masked_fill(excluded, -INF), teacher.masked_fill(excluded, -INF), mask


def _value_and_grad(loss: Loss, student: Tensor, teacher: Tensor, mask: Tensor, **options) -> tuple[Tensor, Tensor]:
    leaf = student.clone().requires_grad_(True)
    value = loss.function(leaf, teacher, mask, **loss.kwargs, **options)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_shared_excluded_entries_match_the_reference(loss: Loss, temperature: float, chunk_size: int | None) -> None:
    student, teacher, mask = _logits()
    value, grad = _value_and_grad(loss, student, teacher, mask, temperature=temperature, chunk_size=chunk_size)
    scale = temperature**2 if loss.kl_family else 1.0
    expected, expected_grad = reference(loss.term, student, teacher, mask, temperature, scale)
    assert math.isfinite(expected) and torch.isfinite(expected_grad).all()
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert torch.isfinite(grad).all() and grad[torch.isinf(student)].abs().sum() == 0
    torch.testing.assert_close(grad, expected_grad.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", LOSSES, ids=IDS)
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_an_entry_only_one_model_excludes_follows_the_formula(loss: Loss, side: str) -> None:
    """``+inf`` where the formula is (plain KL against a zero), else the reference's finite value and gradient."""
    student, teacher, mask = _logits(seed=1)
    restored = 1.0 + torch.zeros_like(student)
    one_sided = torch.isinf(student) & mask[..., None]
    if side == "student":  # the teacher gives mass to the entries only the student excludes
        teacher = torch.where(one_sided, restored, teacher)
    else:
        student = torch.where(one_sided, restored, student)
    finite = loss.finite_if_only_student_excludes if side == "student" else loss.finite_if_only_teacher_excludes
    value, grad = _value_and_grad(loss, student, teacher, mask, chunk_size=2)
    expected, expected_grad = reference(loss.term, student, teacher, mask, 1.0, 1.0)
    if not finite:
        assert value.item() == expected == INF  # +inf, not NaN
        return
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, expected_grad.float(), rtol=1e-4, atol=1e-6)


def test_cross_entropy_on_excluded_entries() -> None:
    """Finite with a zero gradient at the excluded entries, unless the label is excluded or the target smoothed."""
    logits, _, mask = _logits(seed=2)
    draw = torch.rand(logits.shape, generator=torch.Generator().manual_seed(2))
    labels = torch.where(torch.isfinite(logits), draw, -1.0).argmax(-1).masked_fill(~mask, -100)  # allowed entries
    leaf = logits.clone().requires_grad_(True)
    value = token_cross_entropy(leaf, labels, chunk_size=2)
    (grad,) = torch.autograd.grad(value, leaf)
    rows = mask.nonzero().tolist()
    expected = sum(-_probs(logits[b, t].double(), 1.0)[labels[b, t]].log().item() for b, t in rows) / len(rows)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(grad).all() and grad[torch.isinf(logits)].abs().sum() == 0
    excluded_label = labels.clone()
    excluded_label[0, 0] = int(torch.isinf(logits[0, 0]).nonzero()[0])
    assert token_cross_entropy(logits, excluded_label).item() == INF
    assert token_cross_entropy(logits, labels, label_smoothing=0.1).item() == INF  # as F.cross_entropy


# ---------------------------------------------------------------- any logits with shared excluded entries


@st.composite
def excluded_logits(draw: st.DrawFn) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Finite float32 logits of both models with random shared ``-inf`` entries (one finite entry kept per row),
    a random position mask, and labels on kept entries."""
    batch, length, vocab = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 8))
    values = st.floats(-30.0, 30.0, width=32)
    student = torch.from_numpy(draw(arrays(np.float32, (batch, length, vocab), elements=values)))
    teacher = torch.from_numpy(draw(arrays(np.float32, (batch, length, vocab), elements=values)))
    excluded = torch.from_numpy(draw(arrays(np.bool_, (batch, length, vocab))))
    kept = torch.from_numpy(draw(arrays(np.int64, (batch, length), elements=st.integers(0, vocab - 1))))
    excluded.scatter_(2, kept[..., None], False)
    mask = torch.from_numpy(draw(arrays(np.bool_, (batch, length))))
    return student.masked_fill(excluded, -INF), teacher.masked_fill(excluded, -INF), mask, kept


PROPERTY_LOSSES = {
    "forward_kl": (forward_kl_loss, None),
    "reverse_kl": (reverse_kl_loss, None),
    "generalized_jsd": (generalized_jsd_loss, ("beta", [0.0, 0.1, 0.5, 0.9, 1.0])),
    "skew_kl": (skew_kl_loss, ("skew", [0.0, 0.1, 0.5])),
    "skew_reverse_kl": (skew_reverse_kl_loss, ("skew", [0.0, 0.1, 0.5])),
    "total_variation": (total_variation_loss, None),
    "token_cross_entropy": (token_cross_entropy, None),
}


@pytest.mark.parametrize("name", list(PROPERTY_LOSSES))
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_finite_with_finite_gradients_chunked_or_not(name: str, data: st.DataObject) -> None:
    """Every token loss: a finite value >= 0 with a finite gradient (0 at the excluded entries), the same in one
    chunk and in chunks of 2, for float32 and bf16 logits."""
    student, teacher, mask, kept = data.draw(excluded_logits(), label="logits")
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16]), label="dtype")
    function, hyperparameter = PROPERTY_LOSSES[name]
    options = {}
    if hyperparameter is not None:
        options[hyperparameter[0]] = data.draw(st.sampled_from(hyperparameter[1]), label=hyperparameter[0])
    if name != "token_cross_entropy":
        options["temperature"] = data.draw(st.sampled_from([0.5, 1.0, 2.0]), label="temperature")
    second = kept if name == "token_cross_entropy" else teacher.to(dtype)
    results = []
    for chunk_size in (None, 2):
        leaf = student.to(dtype).requires_grad_(True)
        value = function(leaf, second, mask, chunk_size=chunk_size, **options)
        (grad,) = torch.autograd.grad(value, leaf)
        assert value.dtype == torch.float32 and torch.isfinite(value) and value.item() >= -1e-5
        assert torch.isfinite(grad.float()).all() and grad[torch.isinf(student)].abs().sum().item() == 0
        results.append((value, grad.float()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    low = dtype == torch.bfloat16  # the float32 gradients of the two orders of summation may round to adjacent bf16
    torch.testing.assert_close(results[1][1], results[0][1], rtol=2e-2 if low else 1e-5, atol=1e-4 if low else 1e-6)
