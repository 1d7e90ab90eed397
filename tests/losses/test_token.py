"""Tests of the token-level logit losses against independent per-token references written from the papers' formulas.

The generic checks (zero at equality, gradients, dtypes, extreme inputs, errors, defaults and repr) run from
``LossTester`` (``loss_tester.py``) on the cases of :class:`TestTokenLosses`; this file holds the references and the
edge cases (chunking, per-token normalisation, the hard-label loss); ``test_token_infinite.py`` the ``-inf`` logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from losses.loss_tester import BadHyperparameter, Inputs, LossCase, LossTester
from torch import Tensor

from kd_lightning.losses.base import TokenLoss
from kd_lightning.losses.token import (
    ForwardKLLoss,
    GeneralizedJSDLoss,
    ReverseKLLoss,
    SkewKLLoss,
    SkewReverseKLLoss,
    TVDLoss,
    forward_kl_loss,
    generalized_jsd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    token_cross_entropy,
    total_variation_loss,
)

# ---------------------------------------------------------------- independent references (explicit probabilities)


def _probs(logits: Tensor, temperature: float) -> Tensor:
    """``softmax(z / T)`` of one token's logits ``[V]``, written out."""
    e = torch.exp(logits.double() / temperature - (logits.double() / temperature).max())
    return e / e.sum()


def _kl(p: Tensor, q: Tensor) -> float:
    """``KL(p || q) = sum_v p_v * log(p_v / q_v)``."""
    return float((p * torch.log(p / q)).sum())


def _per_token_mean(
    token_loss: Callable[[Tensor, Tensor], float], student: Tensor, teacher: Tensor, mask: Tensor, temperature: float
) -> float:
    """Loop over the masked positions: sum of ``token_loss(p_s, p_t)`` divided by the number of positions."""
    total, count = 0.0, 0
    for b, t in mask.nonzero().tolist():
        total += token_loss(_probs(student[b, t], temperature), _probs(teacher[b, t], temperature))
        count += 1
    return total / count


def ref_forward_kl(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float) -> float:
    """Hinton et al. per token: T^2 * KL(p_t || p_s)."""
    return temperature**2 * _per_token_mean(lambda ps, pt: _kl(pt, ps), student, teacher, mask, temperature)


def ref_reverse_kl(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float) -> float:
    """MiniLLM's token-level reverse KL: T^2 * KL(p_s || p_t)."""
    return temperature**2 * _per_token_mean(lambda ps, pt: _kl(ps, pt), student, teacher, mask, temperature)


def ref_jsd(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float, beta: float) -> float:
    """Agarwal et al. eq. (1): M = beta P_t + (1 - beta) P_s, beta KL(P_t || M) + (1 - beta) KL(P_s || M).

    The ends as TRL: beta = 0 is KL(P_t || P_s), beta = 1 is KL(P_s || P_t).
    """

    def token(ps: Tensor, pt: Tensor) -> float:
        if beta == 0:
            return _kl(pt, ps)
        if beta == 1:
            return _kl(ps, pt)
        m = beta * pt + (1 - beta) * ps
        return beta * _kl(pt, m) + (1 - beta) * _kl(ps, m)

    return temperature**2 * _per_token_mean(token, student, teacher, mask, temperature)


def ref_skew_kl(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float, skew: float) -> float:
    """Ko et al. eq. (3): KL(p || skew p + (1 - skew) q), p = teacher, q = student."""
    token = lambda ps, pt: _kl(pt, skew * pt + (1 - skew) * ps)  # noqa: E731
    return temperature**2 * _per_token_mean(token, student, teacher, mask, temperature)


def ref_skew_reverse_kl(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float, skew: float) -> float:
    """Ko et al. eq. (4): KL(q || skew q + (1 - skew) p), p = teacher, q = student."""
    token = lambda ps, pt: _kl(ps, skew * ps + (1 - skew) * pt)  # noqa: E731
    return temperature**2 * _per_token_mean(token, student, teacher, mask, temperature)


def ref_tvd(student: Tensor, teacher: Tensor, mask: Tensor, temperature: float) -> float:
    """1/2 sum_v |p_t - p_s| per token, not scaled by T^2."""
    return _per_token_mean(lambda ps, pt: 0.5 * float((pt - ps).abs().sum()), student, teacher, mask, temperature)


# ---------------------------------------------------------------- one table drives the reference and generic tests


@dataclass
class Case:
    name: str
    function: Callable[..., Tensor]
    module: type[TokenLoss]
    reference: Callable[..., float]
    kwargs: dict = field(default_factory=dict)

    def call(self, student: Tensor, teacher: Tensor, mask: Tensor | None = None, **options) -> Tensor:
        return self.function(student, teacher, mask, **self.kwargs, **options)


CASES = [
    Case("forward_kl", forward_kl_loss, ForwardKLLoss, ref_forward_kl),
    Case("reverse_kl", reverse_kl_loss, ReverseKLLoss, ref_reverse_kl),
    *(
        Case(f"jsd_{beta}", generalized_jsd_loss, GeneralizedJSDLoss, ref_jsd, {"beta": beta})
        for beta in (0.0, 0.1, 0.5, 0.9, 1.0)
    ),
    *(Case(f"skew_{skew}", skew_kl_loss, SkewKLLoss, ref_skew_kl, {"skew": skew}) for skew in (0.0, 0.1, 0.5)),
    *(
        Case(f"skew_reverse_{skew}", skew_reverse_kl_loss, SkewReverseKLLoss, ref_skew_reverse_kl, {"skew": skew})
        for skew in (0.0, 0.1, 0.5)
    ),
    Case("tvd", total_variation_loss, TVDLoss, ref_tvd),
]
DEFAULT_NAMES = {"forward_kl", "reverse_kl", "jsd_0.5", "skew_0.1", "skew_reverse_0.1", "tvd"}
DEFAULT_CASES = [case for case in CASES if case.name in DEFAULT_NAMES]
IDS = [case.name for case in CASES]
DEFAULT_IDS = [case.name for case in DEFAULT_CASES]


def _batch(
    batch: int = 3, length: int = 6, vocab: int = 13, scale: float = 2.0, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Random student and teacher logits ``[B, L, V]`` and a padding mask with a different length per row."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, length, vocab, generator=generator) * scale
    teacher = torch.randn(batch, length, vocab, generator=generator) * scale
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length  # one unpadded row
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return student, teacher, mask


# ---------------------------------------------------------------- the generic checks

MODULES = [ForwardKLLoss, ReverseKLLoss, GeneralizedJSDLoss, SkewKLLoss, SkewReverseKLLoss, TVDLoss]
MODULE_DEFAULTS = {"temperature": 1.0, "chunk_size": 1024, "positions": "real"}
POSITIONS = BadHyperparameter(
    {"positions": "hidden"}, r"positions in \['real', 'labelled', 'auto'\] but got 'hidden'", function=False
)
BAD_HYPERPARAMETERS = {
    "forward_kl": (
        BadHyperparameter({"temperature": 0.0}, "temperature > 0"),
        BadHyperparameter({"chunk_size": 0}, "chunk_size None or an integer >= 1"),
        BadHyperparameter({"temperature": float("inf")}, "finite temperature > 0"),
    ),
    "reverse_kl": (BadHyperparameter({"temperature": float("nan")}, "temperature > 0"),),
    "tvd": (
        BadHyperparameter({"temperature": -1.0}, "temperature > 0"),
        BadHyperparameter({"chunk_size": 2.5}, "chunk_size None or an integer >= 1"),
    ),
    "jsd_0.5": (
        BadHyperparameter({"beta": 1.5}, r"beta in \[0, 1\]"),
        BadHyperparameter({"beta": -0.1}, r"beta in \[0, 1\]"),
    ),
    "skew_0.1": (BadHyperparameter({"skew": 1.0}, r"skew in \[0, 1\)"),),
    "skew_reverse_0.1": (BadHyperparameter({"skew": -0.5}, r"skew in \[0, 1\)"),),
}


def _function_form(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The function called as a module is built: ``positions`` only tells the objective which mask to pass."""
    return lambda student, teacher, mask=None, positions="real", **kwargs: function(student, teacher, mask, **kwargs)


def _inputs(seed: int) -> Inputs:
    student, teacher, mask = _batch(seed=seed)
    return Inputs(student, teacher, {"mask": mask})


def _loss_case(case: Case) -> LossCase:
    """Defaults of each loss checked once; the default hyperparameters run chunked (checkpointed), the others not."""
    main = case in DEFAULT_CASES
    options = {"chunk_size": 4, "positions": "labelled"} if main else {"chunk_size": None, "positions": "auto"}
    return LossCase(
        case.name,
        case.module,
        _inputs,
        {**case.kwargs, "temperature": 2.0, **options},
        function=_function_form(case.function),
        defaults=(MODULE_DEFAULTS | case.kwargs) if main else {},
        bad_hyperparameters=(*BAD_HYPERPARAMETERS[case.name], POSITIONS) if main else (),
        bf16_atol=0.01,
        batch_mismatch=r"same \[B, L\] token positions but got \({student}, 6\) \(student\) and \({teacher}, 6\)",
    )


class TestTokenLosses(LossTester):
    cases = [_loss_case(case) for case in CASES]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_function_equals_module_equals_reference(case: Case, temperature: float, seed: int) -> None:
    student, teacher, mask = _batch(seed=seed)
    expected = case.reference(student, teacher, mask, temperature=temperature, **case.kwargs)
    from_function = case.call(student, teacher, mask, temperature=temperature)
    from_module = case.module(**case.kwargs, temperature=temperature)(student, teacher, None, mask)
    assert from_function.dtype == torch.float32 and from_function.ndim == 0
    assert from_function.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert from_module.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_no_mask_counts_every_position(case: Case) -> None:
    student, teacher, _ = _batch()
    every = torch.ones(student.shape[:2], dtype=torch.bool)
    assert case.call(student, teacher, None).item() == pytest.approx(
        case.reference(student, teacher, every, 1.0, **case.kwargs), rel=1e-5
    )


def test_generalized_jsd_ends_are_forward_and_reverse_kl() -> None:
    student, teacher, mask = _batch()
    for temperature in (1.0, 2.0):
        forward = forward_kl_loss(student, teacher, mask, temperature)
        reverse = reverse_kl_loss(student, teacher, mask, temperature)
        assert torch.equal(generalized_jsd_loss(student, teacher, mask, beta=0.0, temperature=temperature), forward)
        assert torch.equal(generalized_jsd_loss(student, teacher, mask, beta=1.0, temperature=temperature), reverse)
        assert not torch.isclose(forward, reverse)


def test_skew_zero_is_plain_kl_and_scaling_is_temperature_squared() -> None:
    student, teacher, mask = _batch()
    assert torch.equal(skew_kl_loss(student, teacher, mask, skew=0.0), forward_kl_loss(student, teacher, mask))
    assert torch.equal(skew_reverse_kl_loss(student, teacher, mask, skew=0.0), reverse_kl_loss(student, teacher, mask))
    unscaled = forward_kl_loss(student / 3, teacher / 3, mask)
    assert forward_kl_loss(student, teacher, mask, temperature=3.0).item() == pytest.approx(
        9 * unscaled.item(), rel=1e-5
    )
    assert total_variation_loss(student, teacher, mask, temperature=3.0).item() == pytest.approx(
        total_variation_loss(student / 3, teacher / 3, mask).item(), rel=1e-5
    )


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("scale", [0.1, 5.0, 50.0])
def test_non_negative_and_tvd_at_most_one(case: Case, scale: float) -> None:
    student, teacher, mask = _batch(scale=scale, seed=2)
    value = case.call(student, teacher, mask).item()
    assert value >= -1e-6
    if case.name == "tvd":
        assert value <= 1 + 1e-6


def test_divergences_order_as_the_formulas_say() -> None:
    """JSD_beta is bounded by log 2 (beta = 0.5, T = 1); skew KL with lambda > 0 is below the plain forward KL."""
    student, teacher, mask = _batch(scale=10.0)
    assert generalized_jsd_loss(student, teacher, mask).item() <= math.log(2) + 1e-6
    assert skew_kl_loss(student, teacher, mask, skew=0.5).item() < forward_kl_loss(student, teacher, mask).item()


# ---------------------------------------------------------------- chunking


def _value_and_grad(case: Case, student: Tensor, teacher: Tensor, mask: Tensor, **options) -> tuple[Tensor, Tensor]:
    student = student.clone().requires_grad_(True)
    loss = case.call(student, teacher, mask, **options)
    (grad,) = torch.autograd.grad(loss, student)
    return loss.detach(), grad


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
@pytest.mark.parametrize("chunk_size", [1, 2, 4, 7, 4096])
def test_chunked_equals_unchunked_values_and_gradients(case: Case, chunk_size: int) -> None:
    student, teacher, mask = _batch(batch=4, length=7, seed=3)
    assert int(mask.sum()) == 15  # chunk sizes that do not divide the number of tokens
    value, grad = _value_and_grad(case, student, teacher, mask, temperature=2.0, chunk_size=None)
    chunked_value, chunked_grad = _value_and_grad(case, student, teacher, mask, temperature=2.0, chunk_size=chunk_size)
    torch.testing.assert_close(chunked_value, value)
    torch.testing.assert_close(chunked_grad, grad)
    assert grad[~mask].abs().max() == 0


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_chunks_keep_no_float32_copy_for_backward(chunk_size: int | None) -> None:
    """Checkpointed chunks: autograd saves no float32 ``[n, V]`` tensor; without chunks it does (the contrast)."""
    student, teacher, mask = _batch(length=8, vocab=50)
    student = student.bfloat16().requires_grad_(True)
    saved: list[Tensor] = []

    def pack(tensor: Tensor) -> Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward_kl_loss(student, teacher.bfloat16(), mask, chunk_size=chunk_size)
    big_float32 = [t for t in saved if t.dtype == torch.float32 and t.numel() >= int(mask.sum()) * 50]
    assert bool(big_float32) == (chunk_size is None)
    loss.backward()
    assert torch.isfinite(student.grad.float()).all()


# ---------------------------------------------------------------- normalisation per token


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_accumulated_half_batches_equal_one_batch(case: Case, as_tensor: bool) -> None:
    """f(b8) == f(b4a, num_tokens=N) + f(b4b, num_tokens=N), N = real tokens of b8; b4a trimmed, b4b padded more."""
    student, teacher, mask = _batch(batch=8, length=9, seed=4)
    lengths = mask.sum(1)
    n = int(mask.sum())
    num_tokens = torch.tensor(n) if as_tensor else n
    leaf = student.clone().requires_grad_(True)
    full = case.call(leaf, teacher, mask, temperature=2.0, chunk_size=5)
    (full_grad,) = torch.autograd.grad(full, leaf)

    trim = int(lengths[:4].max())
    junk = torch.randn(4, 3, student.shape[2]) * 100  # extra padding of the second micro-batch: never read
    parts = [
        (leaf[:4, :trim], teacher[:4, :trim], mask[:4, :trim]),
        (torch.cat([leaf[4:], junk], 1), torch.cat([teacher[4:], -junk], 1), F.pad(mask[4:], (0, 3), value=False)),
    ]
    values, grad = [], torch.zeros_like(student)
    for s, t, m in parts:
        value = case.call(s, t, m, temperature=2.0, num_tokens=num_tokens, chunk_size=5)
        grad += torch.autograd.grad(value, leaf)[0]
        values.append(value.item())
    assert sum(values) == pytest.approx(full.item(), rel=1e-5)
    torch.testing.assert_close(grad, full_grad)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_num_tokens_divides_the_sum(case: Case) -> None:
    student, teacher, mask = _batch()
    mean = case.call(student, teacher, mask)
    count = int(mask.sum())
    assert case.call(student, teacher, mask, num_tokens=3 * count).item() == pytest.approx(mean.item() / 3, rel=1e-6)
    assert case.call(student, teacher, mask, num_tokens=torch.tensor(2.5)).item() == pytest.approx(
        mean.item() * count / 2.5, rel=1e-6
    )


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
@pytest.mark.parametrize("num_tokens", [None, 0, torch.tensor(0)], ids=["default", "zero", "zero_tensor"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_empty_mask_gives_zero_and_zero_gradient(case: Case, num_tokens, chunk_size: int | None) -> None:
    student, teacher, mask = _batch()
    student.requires_grad_(True)
    loss = case.call(student, teacher, torch.zeros_like(mask), num_tokens=num_tokens, chunk_size=chunk_size)
    (grad,) = torch.autograd.grad(loss, student)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    assert torch.isfinite(grad).all() and grad.abs().max() == 0


# ---------------------------------------------------------------- dtypes and gradients


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_bfloat16_inputs_run_the_float32_maths(case: Case) -> None:
    """Each bf16 chunk is upcast before any maths: bf16 inputs give the value of their float32 upcast."""
    student, teacher, mask = _batch()
    student16, teacher16 = student.bfloat16(), teacher.bfloat16()
    loss16 = case.call(student16, teacher16, mask, temperature=2.0, chunk_size=4)
    upcast = case.call(student16.float(), teacher16.float(), mask, temperature=2.0)
    assert loss16.item() == pytest.approx(upcast.item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_finite_on_extreme_logits_and_non_contiguous_inputs(case: Case) -> None:
    student, teacher, mask = _batch(length=7, scale=1e4)
    student = student[:, :-1].requires_grad_(True)  # a shifted view, as a caller slicing a causal LM's logits
    loss = case.call(student, teacher[:, 1:], mask[:, 1:], chunk_size=4)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


# ---------------------------------------------------------------- the hard-label loss


def _labels(shape: tuple[int, int], vocab: int, mask: Tensor, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, shape, generator=generator)
    labels[torch.rand(shape, generator=generator) < 0.3] = -100  # unlabelled positions (MLM: unmasked tokens)
    return labels.masked_fill(~mask, -100)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_token_cross_entropy_equals_torch_mean_over_labelled_positions(label_smoothing: float, chunk_size) -> None:
    logits, _, padding = _batch(batch=4, length=7, seed=5)
    labels = _labels((4, 7), 13, padding)
    extra = torch.rand(4, 7, generator=torch.Generator().manual_seed(1)) < 0.8  # the caller's further mask
    expected = F.cross_entropy(
        logits.reshape(-1, 13),
        labels.masked_fill(~extra, -100).flatten(),
        ignore_index=-100,
        reduction="mean",
        label_smoothing=label_smoothing,
    )
    got = token_cross_entropy(logits, labels, extra, chunk_size=chunk_size, label_smoothing=label_smoothing)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert token_cross_entropy(logits, labels).item() == pytest.approx(
        F.cross_entropy(logits.reshape(-1, 13), labels.flatten(), label_smoothing=0.0).item(), rel=1e-6
    )


def test_token_cross_entropy_chunked_gradients_and_empty_labels() -> None:
    logits, _, padding = _batch(batch=4, length=7, seed=6)
    labels = _labels((4, 7), 13, padding, seed=6)
    grads = []
    for chunk_size in (None, 4):
        leaf = logits.clone().bfloat16().requires_grad_(True)
        loss = token_cross_entropy(leaf, labels, num_tokens=torch.tensor(11), chunk_size=chunk_size)
        grads.append(torch.autograd.grad(loss, leaf)[0])
    torch.testing.assert_close(grads[0], grads[1])
    empty = logits.clone().requires_grad_(True)
    loss = token_cross_entropy(empty, torch.full((4, 7), -100))
    assert loss.item() == 0.0 and torch.autograd.grad(loss, empty)[0].abs().max() == 0


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("module", MODULES, ids=[module.__name__ for module in MODULES])
def test_modules_are_token_losses_reading_every_real_token_by_default(module: type[TokenLoss]) -> None:
    """DistilBERT distils on every real token; the labelled positions (its --restrict_ce_to_mask) are an option."""
    loss = module()
    assert isinstance(loss, TokenLoss) and loss.token_kind == "logits"
    assert loss.positions == TokenLoss.positions == "real"
    assert [module(positions=rule).positions for rule in ("labelled", "auto")] == ["labelled", "auto"]


def test_module_forwards_mask_and_num_tokens_and_ignores_target() -> None:
    student, teacher, mask = _batch()
    module = GeneralizedJSDLoss(beta=0.9, temperature=2.0, chunk_size=2, positions="labelled")
    expected = generalized_jsd_loss(student, teacher, mask, beta=0.9, temperature=2.0, num_tokens=7)
    got = module(student, teacher, target=torch.zeros(3, 6, dtype=torch.long), mask=mask, num_tokens=7)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_class_logits_point_to_kd_loss(case: Case) -> None:
    with pytest.raises(ValueError, match=r"shape \[B, L, V\] \(3-d\) but got shape \(4, 5\).*KDLoss"):
        case.call(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(ValueError, match="teacher logits of shape"):
        case.module()(torch.randn(4, 5, 3), torch.randn(4, 5))


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=DEFAULT_IDS)
def test_vocabulary_mismatch_names_both_sizes_and_the_fix(case: Case) -> None:
    message = r"same vocabulary but got 11 \(student\) and 13 \(teacher\).*student_from_teacher.*vocab_size=13"
    with pytest.raises(ValueError, match=message):
        case.call(torch.randn(2, 3, 11), torch.randn(2, 3, 13))


@pytest.mark.parametrize("teacher_shape", [(3, 3, 11), (2, 4, 11)])
def test_position_mismatch(teacher_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"same \[B, L\] token positions but got \(2, 3\) \(student\)"):
        forward_kl_loss(torch.randn(2, 3, 11), torch.randn(*teacher_shape))


def test_mask_and_labels_shapes() -> None:
    student, teacher, mask = _batch()
    with pytest.raises(ValueError, match=r"mask of shape \[B, L\] = \(3, 6\) but got \(3, 5\)"):
        reverse_kl_loss(student, teacher, mask[:, :5])
    labels = torch.zeros(3, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"integer labels of shape \[B, L\] = \(3, 6\) but got .* shape \(3, 5\)"):
        token_cross_entropy(student, labels[:, :5])
    with pytest.raises(ValueError, match="integer labels"):
        token_cross_entropy(student, labels.float())
    with pytest.raises(ValueError, match=r"mask of shape \[B, L\] = \(3, 6\) but got \(6,\)"):
        token_cross_entropy(student, labels, mask[0])


@pytest.mark.parametrize("num_tokens", [-1, float("nan"), float("inf"), torch.ones(2)])
def test_bad_num_tokens(num_tokens) -> None:
    student, teacher, mask = _batch()
    with pytest.raises(ValueError, match="num_tokens"):
        forward_kl_loss(student, teacher, mask, num_tokens=num_tokens)


def test_bad_label_smoothing_rejected() -> None:
    student, _, _ = _batch()
    with pytest.raises(ValueError, match=r"label_smoothing in \[0, 1\]"):
        token_cross_entropy(student, torch.zeros(3, 6, dtype=torch.long), label_smoothing=1.5)
