"""Tests of the hidden-state losses against independent references written from the papers' formulas.

The cosine reference is DistilBERT's exact call: ``nn.CosineEmbeddingLoss`` with target 1 on the attention-masked rows
(``torch.masked_select`` of the hidden states). The MSE reference is the per-token mean over ``H`` of the squared error
in float64, averaged over the selected tokens. Projections are re-applied by hand from their weights. The generic
checks (zero at equality, gradients, projections, dtypes, extreme inputs, errors, repr) run from ``LossTester``
(``loss_tester.py``) on the cases of :class:`TestHiddenStateLosses`; this file holds the references and edge cases.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from losses.loss_tester import Inputs, LossCase, LossTester
from torch import Tensor, nn

from kd_lightning.losses.adapters import LazyAdapter
from kd_lightning.losses.base import ANY_LAYERS, TokenLoss
from kd_lightning.losses.hidden import HiddenCosineLoss, HiddenMSELoss, hidden_cosine_loss, hidden_mse_loss

LossFunction = Callable[..., Tensor]

# ---------------------------------------------------------------- independent references


def ref_cosine(student: Tensor, teacher: Tensor, mask: Tensor) -> float:
    """DistilBERT `distiller.py`: masked_select the real tokens' rows, CosineEmbeddingLoss(reduction="mean"), y = 1."""
    dim = student.shape[-1]
    expanded = mask.unsqueeze(-1).expand_as(student)
    s_rows = torch.masked_select(student.double(), expanded).view(-1, dim)
    t_rows = torch.masked_select(teacher.double(), expanded).view(-1, dim)
    target = s_rows.new(s_rows.size(0)).fill_(1)
    return nn.CosineEmbeddingLoss(reduction="mean")(s_rows, t_rows, target).item()


def ref_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> float:
    """``sum_{(b, l) selected} (1 / H) sum_h (s_blh - t_blh)^2 / #selected``, by explicit loops in float64."""
    s, t, m = student.double().tolist(), teacher.double().tolist(), mask.tolist()
    per_token = [
        sum((a - b) ** 2 for a, b in zip(s[i][j], t[i][j], strict=True)) / len(s[i][j])
        for i in range(len(m))
        for j in range(len(m[i]))
        if m[i][j]
    ]
    return sum(per_token) / len(per_token)


FUNCTIONS = {"cosine": (hidden_cosine_loss, ref_cosine), "mse": (hidden_mse_loss, ref_mse)}
MODULES = {"cosine": HiddenCosineLoss, "mse": HiddenMSELoss}
KINDS = list(FUNCTIONS)


def _states(batch: int, length: int, width: int, seed: int) -> Tensor:
    return torch.randn(batch, length, width, generator=torch.Generator().manual_seed(seed))


def _padding_mask(lengths: list[int], length: int) -> Tensor:
    """``[B, L]`` bool attention mask of right-padded sequences of the given lengths."""
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def _project(states: Tensor, projection: nn.Module) -> Tensor:
    """Apply a built projection by hand: ``s @ W^T + b`` (identity for an equal-width pair)."""
    if isinstance(projection, nn.Identity):
        return states
    linear = projection.net
    return states @ linear.weight.detach().T + linear.bias.detach()


# ---------------------------------------------------------------- the generic checks

WIDTHS = [(8, 8), (6, 8), (4, 12)]


def _layer_map(seed: int = 0, batch: int = 3, length: int = 5) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    student = tuple(_states(batch, length, w_s, seed + i) for i, (w_s, _) in enumerate(WIDTHS))
    teacher = tuple(_states(batch, length, w_t, seed + 10 + i) for i, (_, w_t) in enumerate(WIDTHS))
    return student, teacher


def _one_pair(seed: int) -> Inputs:
    """One pair of equal widths (no projection), right-padded to lengths 5, 3 and 1."""
    return Inputs(_states(3, 5, 8, seed), _states(3, 5, 8, seed + 100), {"mask": _padding_mask([5, 3, 1], 5)})


def _projected_map(seed: int) -> Inputs:
    """The three-pair layer map of ``WIDTHS``: two pairs get a projection."""
    return Inputs(*_layer_map(seed), {"mask": _padding_mask([5, 2, 4], 5)})


def _function_form(function: LossFunction) -> LossFunction:
    return lambda student, teacher, mask, project: function(student, teacher, mask)


def _cases(kind: str) -> list[LossCase]:
    module, function = MODULES[kind], _function_form(FUNCTIONS[kind][0])
    batch = r"same batch size and length"
    return [
        LossCase(
            kind,
            module,
            _one_pair,
            {"project": True},
            function=function,
            defaults={"project": True},
            bf16_rtol=0.02,
            batch_mismatch=batch,
        ),
        LossCase(
            f"{kind}_projected",
            module,
            _projected_map,
            {"project": True},
            zero_at_equality=False,
            adapter=True,
            bf16_rtol=0.02,
            batch_mismatch=batch,
        ),
    ]


class TestHiddenStateLosses(LossTester):
    cases = [case for kind in KINDS for case in _cases(kind)]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_function_equals_reference_on_padded_batch(kind: str, seed: int) -> None:
    function, reference = FUNCTIONS[kind]
    student, teacher = _states(4, 7, 6, seed), _states(4, 7, 6, seed + 100)
    mask = _padding_mask([7, 5, 1, 3], 7)
    value = function(student, teacher, mask)
    assert value.dtype == torch.float32 and value.shape == ()
    assert value.item() == pytest.approx(reference(student, teacher, mask), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_no_mask_selects_every_token_and_int_masks_are_accepted(kind: str) -> None:
    function, reference = FUNCTIONS[kind]
    student, teacher = _states(3, 5, 4, 0), _states(3, 5, 4, 1)
    everything = torch.ones(3, 5, dtype=torch.bool)
    assert function(student, teacher).item() == pytest.approx(reference(student, teacher, everything), rel=1e-5)
    mask = _padding_mask([5, 2, 4], 5)
    torch.testing.assert_close(function(student, teacher, mask.long()), function(student, teacher, mask))


@pytest.mark.parametrize("kind", KINDS)
def test_padding_values_do_not_matter(kind: str) -> None:
    function, _ = FUNCTIONS[kind]
    student, teacher = _states(3, 6, 4, 0), _states(3, 6, 4, 1)
    mask = _padding_mask([6, 2, 4], 6)
    noisy = torch.where(mask[..., None], student, 1e3 * _states(3, 6, 4, 2))
    torch.testing.assert_close(function(noisy, teacher, mask), function(student, teacher, mask))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_padding_reaches_neither_value_nor_gradient(kind: str, bad: float) -> None:
    """A fully padded sequence can get NaN hidden states from an attention kernel: padding is zeroed before any maths,
    so the value, the student's gradient and the projections' gradients stay those of clean padding."""
    student, teacher = _layer_map()
    mask = _padding_mask([5, 0, 4], 5)
    dirty = tuple(torch.where(mask[..., None], s, bad) for s in student)
    dirty_teacher = tuple(torch.where(mask[..., None], t, bad) for t in teacher)
    values, grads = [], []
    for s, t in ((student, teacher), (dirty, dirty_teacher)):
        torch.manual_seed(0)
        loss = MODULES[kind]()
        leaves = tuple(x.clone().requires_grad_(True) for x in s)
        value = loss(leaves, t, mask=mask)
        values.append(value)
        grads.append(torch.autograd.grad(value, [*leaves, *loss.parameters()]))
    torch.testing.assert_close(values[1], values[0])
    for dirty_grad, clean_grad in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(dirty_grad, clean_grad)
    function = FUNCTIONS[kind][0]
    torch.testing.assert_close(function(dirty[0], dirty_teacher[0], mask), function(student[0], teacher[0], mask))


@pytest.mark.parametrize("kind", KINDS)
def test_split_batch_with_total_num_tokens_equals_whole_batch(kind: str) -> None:
    """Gradient accumulation: two halves, each divided by the whole batch's token count, sum to the whole loss."""
    function, _ = FUNCTIONS[kind]
    student = _states(8, 6, 5, 0).requires_grad_(True)
    teacher = _states(8, 6, 5, 1)
    mask = _padding_mask([6, 1, 3, 6, 2, 5, 4, 6], 6)
    whole = function(student, teacher, mask)
    (grad_whole,) = torch.autograd.grad(whole, student)
    total = mask.sum()
    halves = [function(student[i : i + 4], teacher[i : i + 4], mask[i : i + 4], num_tokens=total) for i in (0, 4)]
    split = halves[0] + halves[1]
    (grad_split,) = torch.autograd.grad(split, student)
    assert split.item() == pytest.approx(whole.item(), rel=1e-6)
    torch.testing.assert_close(grad_split, grad_whole)
    as_float = [function(student[i : i + 4], teacher[i : i + 4], mask[i : i + 4], float(total)) for i in (0, 4)]
    assert (as_float[0] + as_float[1]).item() == pytest.approx(whole.item(), rel=1e-6)


@pytest.mark.parametrize("num_tokens", [None, 0, torch.tensor(0)], ids=["default", "zero", "zero_tensor"])
@pytest.mark.parametrize("kind", KINDS)
def test_empty_mask_gives_zero_with_zero_gradient(kind: str, num_tokens: Tensor | int | None) -> None:
    function, _ = FUNCTIONS[kind]
    student = _states(2, 4, 3, 0).requires_grad_(True)
    value = function(student, _states(2, 4, 3, 1), torch.zeros(2, 4, dtype=torch.bool), num_tokens)
    (grad,) = torch.autograd.grad(value, student)
    assert value.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


def test_cosine_ignores_the_scale_of_each_token_and_mse_does_not() -> None:
    student, teacher = _states(2, 4, 5, 0), _states(2, 4, 5, 1)
    scale = torch.rand(2, 4, 1) + 0.5
    torch.testing.assert_close(hidden_cosine_loss(student * scale, teacher), hidden_cosine_loss(student, teacher))
    assert hidden_mse_loss(2 * student, 2 * teacher).item() == pytest.approx(
        4 * hidden_mse_loss(student, teacher).item(), rel=1e-6
    )


# ---------------------------------------------------------------- layer maps and projections


def test_module_class_attributes() -> None:
    for make in MODULES.values():
        assert issubclass(make, TokenLoss)
        assert make.token_kind == "hidden" and make.layers_per_network == ANY_LAYERS == 0
        assert make().positions == "hidden"


@pytest.mark.parametrize("kind", KINDS)
def test_layer_map_is_the_mean_of_the_single_pair_losses(kind: str) -> None:
    function, reference = FUNCTIONS[kind]
    student, teacher = _layer_map()
    mask = _padding_mask([5, 2, 4], 5)
    loss = MODULES[kind]()
    value = loss(student, teacher, mask=mask)
    projected = [_project(s, projection) for s, projection in zip(student, loss.projections, strict=True)]
    pairs = [reference(s, t, mask) for s, t in zip(projected, teacher, strict=True)]
    assert value.item() == pytest.approx(sum(pairs) / 3, rel=1e-5, abs=1e-6)
    singles = [function(s, t, mask) for s, t in zip(projected, teacher, strict=True)]
    assert value.item() == pytest.approx(torch.stack(singles).mean().item(), rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_single_tensor_is_a_one_pair_map(kind: str) -> None:
    student, teacher = _states(2, 4, 6, 0), _states(2, 4, 6, 1)
    mask = _padding_mask([4, 2], 4)
    expected = FUNCTIONS[kind][0](student, teacher, mask)
    torch.testing.assert_close(MODULES[kind]()(student, teacher, mask=mask), expected)
    torch.testing.assert_close(MODULES[kind](project=False)([student], (teacher,), mask=mask), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_projections_built_lazily_with_the_right_shapes_and_trained(kind: str) -> None:
    loss = MODULES[kind]()
    assert len(loss.projections) == 0 and not list(loss.parameters())
    student, teacher = _layer_map()
    value = loss(student, teacher, mask=_padding_mask([5, 2, 4], 5))
    assert isinstance(loss.projections[0], nn.Identity)
    for projection, (w_s, w_t) in zip(loss.projections[1:], WIDTHS[1:], strict=True):
        assert isinstance(projection, LazyAdapter) and isinstance(projection.net, nn.Linear)
        assert projection.net.weight.shape == (w_t, w_s) and projection.net.bias.shape == (w_t,)
    params = list(loss.parameters())
    assert len(params) == 4
    for grad in torch.autograd.grad(value, params):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_loads_strictly_into_a_fresh_loss_before_any_forward(kind: str) -> None:
    student, teacher = _layer_map()
    mask = _padding_mask([5, 2, 4], 5)
    loss = MODULES[kind]()
    loss(student, teacher, mask=mask)
    with torch.no_grad():
        for param in loss.parameters():
            param.add_(0.1 * torch.randn_like(param))
    state = loss.state_dict()
    assert {"widths", "projections.1.shapes", "projections.1.net.weight", "projections.2.net.bias"} <= set(state)
    assert state["widths"].tolist() == [list(widths) for widths in WIDTHS]
    restored = MODULES[kind]()
    restored.load_state_dict(state, strict=True)
    assert [type(p) for p in restored.projections] == [type(p) for p in loss.projections]
    torch.testing.assert_close(restored(student, teacher, mask=mask), loss(student, teacher, mask=mask), rtol=0, atol=0)
    torch.testing.assert_close(copy.deepcopy(loss)(student, teacher, mask=mask), loss(student, teacher, mask=mask))


def test_project_false_state_dict_round_trips_and_keeps_the_pair_count() -> None:
    states = _states(2, 3, 4, 0)
    loss = HiddenMSELoss(project=False)
    loss((states, states), (states, states))
    assert list(loss.state_dict()) == ["widths"]
    restored = HiddenMSELoss(project=False)
    restored.load_state_dict(loss.state_dict(), strict=True)
    with pytest.raises(ValueError, match="expected 2 layer pairs"):
        restored(states, states)


def test_loading_a_state_dict_of_another_layer_map_into_a_built_loss_fails() -> None:
    student, teacher = _layer_map()
    loss = HiddenCosineLoss()
    loss(student, teacher)
    other = HiddenCosineLoss()
    other(student[:2], teacher[:2])
    with pytest.raises(RuntimeError, match="load it into a fresh loss"):
        other.load_state_dict(loss.state_dict())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", KINDS)
def test_project_false_width_mismatch_names_the_pair_and_the_fix(kind: str) -> None:
    student, teacher = _layer_map()
    with pytest.raises(ValueError, match=r"pair 1 but got student \(3, 5, 6\) and teacher \(3, 5, 8\).*project: true"):
        MODULES[kind](project=False)(student, teacher)
    with pytest.raises(ValueError, match=r"same width H .*project=True.*or pair layers of equal width"):
        FUNCTIONS[kind][0](student[1], teacher[1])


@pytest.mark.parametrize("kind", KINDS)
def test_feature_maps_are_rejected_with_a_pointer_to_the_feature_losses(kind: str) -> None:
    feature_map = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"3-d \[B, L, H\] student .*\(2, 4, 3, 3\).*FitNetsLoss, ATLoss"):
        FUNCTIONS[kind][0](feature_map, feature_map)
    with pytest.raises(ValueError, match=r"teacher hidden states of pair 0 but got shape \(2, 4, 3, 3\).*FitNetsLoss"):
        MODULES[kind]()(torch.randn(2, 4, 3), feature_map)
    with pytest.raises(ValueError, match=r"3-d \[B, L, H\] student .*\(2, 4\); tap a transformer layer"):
        FUNCTIONS[kind][0](torch.randn(2, 4), torch.randn(2, 4))


@pytest.mark.parametrize("kind", KINDS)
def test_pair_count_or_width_change_is_rejected(kind: str) -> None:
    student, teacher = _layer_map()
    loss = MODULES[kind]()
    loss(student, teacher)
    with pytest.raises(ValueError, match="expected 3 layer pairs .* but got 2"):
        loss(student[:2], teacher[:2])
    with pytest.raises(ValueError, match=r"widths \[\(8, 8\), \(6, 8\), \(4, 12\)\] .* but got"):
        loss((student[0], student[2], student[1]), (teacher[0], teacher[2], teacher[1]))
    with pytest.raises(ValueError, match="as many teacher as student layers"):
        loss(student, teacher[:2])


@pytest.mark.parametrize("kind", KINDS)
def test_batch_length_and_mask_shape_are_checked(kind: str) -> None:
    function = FUNCTIONS[kind][0]
    states = _states(2, 4, 3, 0)
    with pytest.raises(ValueError, match=r"same batch size and length .*\(2, 4, 3\) \(student\) and \(1, 4, 3\)"):
        function(states, states[:1])
    with pytest.raises(ValueError, match=r"same batch size and length"):
        MODULES[kind]()(states, states[:, :3])
    with pytest.raises(ValueError, match=r"mask of shape \[B, L\] = \(2, 4\) but got \(2, 3\)"):
        function(states, states, torch.ones(2, 3, dtype=torch.bool))
    for bad in (-1.0, True):
        with pytest.raises(ValueError, match="expected num_tokens >= 0"):
            function(states, states, None, bad)
    with pytest.raises(ValueError, match=r"num_tokens as a number or a 0-d tensor but got a tensor of shape \(2,\)"):
        function(states, states, None, torch.ones(2))
    with pytest.raises(ValueError, match="a non-empty tuple of them"):
        MODULES[kind]()((), ())
