"""The token losses against a sparse teacher (:class:`SparseLogits`) computed over ``k + 1`` buckets, checked against an
independent dense reference: the rebuilt teacher distribution over the whole vocabulary written out from the policy's
formula (float64, plain torch), the divergence summed over the ``V`` entries, its value and its gradient w.r.t. the
student's logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from kd_lightning.losses.token import (
    SparseLogits,
    forward_kl_loss,
    generalized_jsd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    total_variation_loss,
)

V = 11
EPS = torch.finfo(torch.float32).eps


def rebuilt_teacher(teacher: Tensor, k: int, policy: str, temperature: float, student: Tensor) -> Tensor:
    """The rebuilt teacher distribution ``p_T`` ``[n, V]`` (float64) of dense teacher logits ``[n, V]`` cut to their top
    k, written from :class:`SparseLogits`' formulas (not from the library's ``log_probs``)."""
    teacher, student = teacher.double(), student.detach().double()
    n = teacher.shape[0]
    lse = torch.log(torch.exp(teacher).sum(-1))  # the stored log-normaliser of the full logits, at T = 1
    values, indices = teacher.topk(k, dim=-1)
    tempered = values / temperature
    top_in = torch.zeros(n, V, dtype=torch.bool).scatter(1, indices, True)
    p = torch.zeros(n, V, dtype=torch.float64)
    if policy == "renormalise" or k == V:
        if policy == "tail" and temperature == 1:
            top = torch.exp(values - lse[:, None])
        else:
            top = torch.exp(tempered) / torch.exp(tempered).sum(-1, keepdim=True)
        return p.scatter(1, indices, top)
    if temperature == 1:
        log_z = lse
    else:  # the missing mass (at T = 1) spread evenly over the V - k other entries, then tempered
        missing = (1 - torch.exp(values - lse[:, None]).sum(-1)).clamp_min(EPS)
        tail_logit = lse + torch.log(missing / (V - k))
        log_z = torch.log(torch.exp(tempered).sum(-1) + (V - k) * torch.exp(tail_logit / temperature))
    top = torch.exp(tempered - log_z[:, None])
    missing = (1 - top.sum(-1)).clamp_min(EPS)
    q = torch.softmax(student / temperature, dim=-1).masked_fill(top_in, 0.0)
    p = missing[:, None] * q / q.sum(-1, keepdim=True)
    p = p.scatter(1, indices, top)
    return p / p.sum(-1, keepdim=True)  # normalised, as the loss reads it (differs from 1 only at the eps floor)


def _kl(p: Tensor, q: Tensor) -> Tensor:
    """``sum_v p log(p / q)`` per row, ``0 log 0 = 0``."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


DIVERGENCES: dict[str, tuple[Callable[..., Tensor], dict, Callable[[Tensor, Tensor], Tensor], bool]] = {
    # name: (function, kwargs, per-row divergence of (p_T, q_T), multiplied by T**2)
    "forward_kl": (forward_kl_loss, {}, lambda p, q: _kl(p, q), True),
    "reverse_kl": (reverse_kl_loss, {}, lambda p, q: _kl(q, p), True),
    "jsd": (
        generalized_jsd_loss,
        {"beta": 0.3},
        lambda p, q: 0.3 * _kl(p, 0.3 * p + 0.7 * q) + 0.7 * _kl(q, 0.3 * p + 0.7 * q),
        True,
    ),
    "jsd_beta_0": (generalized_jsd_loss, {"beta": 0.0}, lambda p, q: _kl(p, q), True),
    "skew_kl": (skew_kl_loss, {"skew": 0.1}, lambda p, q: _kl(p, 0.1 * p + 0.9 * q), True),
    "skew_reverse_kl": (skew_reverse_kl_loss, {"skew": 0.1}, lambda p, q: _kl(q, 0.1 * q + 0.9 * p), True),
    "tvd": (total_variation_loss, {}, lambda p, q: 0.5 * (p - q).abs().sum(-1), False),
}


def _inputs(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Student and teacher logits ``[2, 4, V]`` and a mask ``[2, 4]`` whose unselected rows hold NaN / -inf logits."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(2, 4, V, generator=generator) * 1.5
    teacher = torch.randn(2, 4, V, generator=generator) * 2.0
    mask = torch.tensor([[True, False, True, True], [True, True, False, True]])
    student[0, 1] = math.nan
    student[1, 2, :3] = -math.inf
    return student, teacher, mask


def _sparse(teacher: Tensor, k: int, policy: str) -> SparseLogits:
    top = teacher.topk(k, dim=-1)
    return SparseLogits(top.values, top.indices, teacher.logsumexp(-1), vocab_size=V, missing_mass=policy)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("k", [1, 4, V])
@pytest.mark.parametrize("policy", ["tail", "renormalise"])
@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_sparse_rows_equal_the_dense_rebuilt_divergence(name, policy, k, temperature, monkeypatch):
    function, kwargs, divergence, scaled = DIVERGENCES[name]
    student, teacher, mask = _inputs(seed=k + int(10 * temperature))
    sparse = _sparse(teacher, k, policy)

    def dense_rebuild(*args, **options):  # the bucket path never builds the [n, V] teacher
        raise AssertionError("SparseLogits.log_probs was called")

    monkeypatch.setattr(SparseLogits, "log_probs", dense_rebuild)
    for chunk_size in (None, 3):
        logits = student.clone().requires_grad_(True)
        got = function(logits, sparse, mask, temperature=temperature, chunk_size=chunk_size, **kwargs)
        got.backward()

        kept = mask.flatten()
        rows = student.flatten(0, 1)[kept].double().requires_grad_(True)
        p = rebuilt_teacher(teacher.flatten(0, 1)[kept], k, policy, temperature, rows)
        q = torch.softmax(rows / temperature, dim=-1)
        expected = divergence(p, q).sum() / kept.sum() * (temperature**2 if scaled else 1.0)

        if not torch.isfinite(expected):  # the student's mass outside the top k, read against a teacher's 0
            assert name == "reverse_kl" and policy == "renormalise" and k < V
            assert got.item() == math.inf
            continue
        expected.backward()
        torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-5, atol=1e-5)
        gradient = torch.zeros(8, V, dtype=torch.float64)
        gradient[kept] = rows.grad
        assert torch.isfinite(logits.grad).all()
        assert (logits.grad.flatten(0, 1)[~kept] == 0).all()  # the NaN row adds nothing, not even to the gradient
        torch.testing.assert_close(logits.grad.flatten(0, 1).double(), gradient, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_sparse_rows_in_bfloat16_follow_float32(name, chunk_size):
    function, kwargs, _, _ = DIVERGENCES[name]
    student, teacher, mask = _inputs(seed=3)
    sparse = _sparse(teacher, 4, "tail")
    rounded, results = student.to(torch.bfloat16), []
    for dtype in (torch.float32, torch.bfloat16):
        logits = rounded.to(dtype).clone().requires_grad_(True)
        loss = function(logits, sparse, mask, chunk_size=chunk_size, **kwargs)
        loss.backward()
        assert loss.dtype == torch.float32 and logits.grad.dtype == dtype
        results.append((loss, logits.grad.float()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=2e-2, atol=2e-2)


def test_a_student_without_mass_outside_the_top_k_reads_the_teacher_renormalised():
    """As the dense rebuild: the tail, proportional to the student, is then 0 and the k entries are renormalised."""
    student, teacher, mask = _inputs(seed=5)
    k = 4
    outside = torch.ones_like(student, dtype=torch.bool).scatter(-1, teacher.topk(k, dim=-1).indices, False)
    student = student.masked_fill(outside, -math.inf).requires_grad_(True)
    tail = skew_kl_loss(student, _sparse(teacher, k, "tail"), mask, temperature=2.0)
    renormalised = skew_kl_loss(student, _sparse(teacher, k, "renormalise"), mask, temperature=2.0)
    assert torch.isfinite(tail)
    torch.testing.assert_close(tail, renormalised)
    tail.backward()
    assert (
        torch.isfinite(student.grad).all() and (student.grad[outside] == 0).all() and (student.grad[~mask] == 0).all()
    )
