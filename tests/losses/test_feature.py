"""Tests of the feature-based losses against independent per-element references written from the papers' formulas.

The references are plain-python loops in float64 over samples, channels and pixels, at the scale of the reference
implementation (HobbitLong/RepDistiller ``distiller_zoo``); adapters are re-applied by hand from their weights. The
generic checks (zero at equality, gradients, adapters, dtypes, extreme inputs, errors, repr) run from ``LossTester``
(``loss_tester.py``) on the cases of :class:`TestFeatureLosses`; this file holds the references and the edge cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from losses.loss_tester import BadHyperparameter, Inputs, LossCase, LossTester
from torch import Tensor, nn

from kd_lightning.losses.feature import (
    ATLoss,
    FitNetsLoss,
    NSTLoss,
    VIDLoss,
    at_loss,
    fitnets_loss,
    nst_loss,
    vid_loss,
)

Grid = list[list[float]]

# ---------------------------------------------------------------- independent references (plain python, float64)


def _adaptive_pool(grid: Grid, out_h: int, out_w: int) -> Grid:
    """Adaptive average pooling of one ``H x W`` map: cell i covers rows floor(i*H/h) .. ceil((i+1)*H/h)."""
    in_h, in_w = len(grid), len(grid[0])
    out = []
    for i in range(out_h):
        r0, r1 = (i * in_h) // out_h, -((-(i + 1) * in_h) // out_h)
        row = []
        for j in range(out_w):
            c0, c1 = (j * in_w) // out_w, -((-(j + 1) * in_w) // out_w)
            cells = [grid[r][c] for r in range(r0, r1) for c in range(c0, c1)]
            row.append(sum(cells) / len(cells))
        out.append(row)
    return out


def _pooled(student: Tensor, teacher: Tensor) -> tuple[list, list]:
    """Nested lists ``[B][C][H][W]``, the larger map of the pair average-pooled to the smaller ``H`` and ``W``."""
    h = min(student.shape[2], teacher.shape[2])
    w = min(student.shape[3], teacher.shape[3])
    pool = [
        [[_adaptive_pool(grid, h, w) for grid in sample] for sample in x.double().tolist()] for x in (student, teacher)
    ]
    return pool[0], pool[1]


def _flat(values) -> list[float]:
    if isinstance(values, list):
        return [v for item in values for v in _flat(item)]
    return [values]


def ref_mse(student: Tensor, teacher: Tensor) -> float:
    """FitNets / RepDistiller HintLoss: nn.MSELoss, the mean over every element."""
    s, t = _flat(student.double().tolist()), _flat(teacher.double().tolist())
    return sum((a - b) ** 2 for a, b in zip(s, t, strict=True)) / len(s)


def _conv_bn_train(student: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tensor:
    """1x1 conv (no bias) then train-mode BN (batch statistics, biased variance), by explicit loops."""
    x = student.double().tolist()
    weight = conv.weight.detach().double()[:, :, 0, 0].tolist()
    batch, height, width = len(x), len(x[0][0]), len(x[0][0][0])
    out = torch.zeros(batch, len(weight), height, width, dtype=torch.float64)
    for o, w_o in enumerate(weight):
        y = [
            [[sum(w_o[c] * x[b][c][i][j] for c in range(len(w_o))) for j in range(width)] for i in range(height)]
            for b in range(batch)
        ]
        values = _flat(y)
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        gamma, beta = bn.weight[o].item(), bn.bias[o].item()
        for b in range(batch):
            for i in range(height):
                for j in range(width):
                    out[b, o, i, j] = (y[b][i][j] - mean) / math.sqrt(var + bn.eps) * gamma + beta
    return out


def ref_fitnets(module: FitNetsLoss, student: Tensor, teacher: Tensor) -> float:
    """Romero et al.: MSE(r(f_s), f_t), r = 1x1 conv + BN (+ average pooling) or a linear layer, as built."""
    if module.regressor is None:
        return ref_mse(student, teacher)
    net = module.regressor.net
    if isinstance(net, nn.Linear):
        w, bias = net.weight.detach().double().tolist(), net.bias.detach().double().tolist()
        rows = [
            [sum(wi * xi for wi, xi in zip(w_o, x, strict=True)) + b_o for w_o, b_o in zip(w, bias, strict=True)]
            for x in student.double().tolist()
        ]
        return ref_mse(torch.tensor(rows), teacher)
    mapped = _conv_bn_train(student, net[0], net[1])
    if mapped.shape[2:] != teacher.shape[2:]:
        mapped = torch.tensor([[_adaptive_pool(g, *teacher.shape[2:]) for g in sample] for sample in mapped.tolist()])
    return ref_mse(mapped, teacher)


def _normalise(values: list[float], eps: float = 1e-12) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / max(norm, eps) for v in values]


def ref_at(student: Tensor, teacher: Tensor, p: float) -> float:
    """Zagoruyko & Komodakis: Q = normalise(mean_c |A_c|^p) per sample; mean over samples and pixels of (Q_s-Q_t)^2."""
    s, t = _pooled(student, teacher)
    total, count = 0.0, 0
    for f_s, f_t in zip(s, t, strict=True):
        q = []
        for f in (f_s, f_t):
            pixels = [[abs(grid[i][j]) ** p for grid in f] for i in range(len(f[0])) for j in range(len(f[0][0]))]
            q.append(_normalise([sum(channels) / len(channels) for channels in pixels]))
        total += sum((a - b) ** 2 for a, b in zip(q[0], q[1], strict=True))
        count += len(q[0])
    return total / count


def _kernel_mean(us: list[list[list[float]]], vs: list[list[list[float]]]) -> float:
    """Mean over samples and channel pairs of the polynomial kernel (u . v)^2."""
    total, count = 0.0, 0
    for u_b, v_b in zip(us, vs, strict=True):
        for u in u_b:
            for v in v_b:
                total += sum(a * b for a, b in zip(u, v, strict=True)) ** 2
                count += 1
    return total / count


def ref_nst(student: Tensor, teacher: Tensor) -> float:
    """Huang & Wang: MMD^2 with k(u, v) = (u . v)^2 on L2-normalised channel maps (RepDistiller's means)."""
    s, t = _pooled(student, teacher)
    u_s = [[_normalise(_flat(grid)) for grid in sample] for sample in s]
    u_t = [[_normalise(_flat(grid)) for grid in sample] for sample in t]
    return _kernel_mean(u_t, u_t) + _kernel_mean(u_s, u_s) - 2 * _kernel_mean(u_s, u_t)


def _relu_matvec(weight: list[list[float]], x: list[float], relu: bool) -> list[float]:
    out = [sum(w * v for w, v in zip(row, x, strict=True)) for row in weight]
    return [max(v, 0.0) for v in out] if relu else out


def ref_vid(module: VIDLoss, student: Tensor, teacher: Tensor) -> float:
    """Ahn et al.: mean over elements of 0.5 * ((mu - t)^2 / var + log var), mu from three 1x1 convs with ReLUs."""
    if student.ndim == 2:
        student, teacher = student[:, :, None, None], teacher[:, :, None, None]
    s, t = _pooled(student, teacher)
    net = module.adapter.net
    weights = [
        layer.weight.detach().double()[:, :, 0, 0].tolist() for layer in net.regressor if hasattr(layer, "weight")
    ]
    var = [math.log(1.0 + math.exp(v)) + module.eps for v in net.log_scale.detach().double().tolist()]
    total, count = 0.0, 0
    for f_s, f_t in zip(s, t, strict=True):
        for i in range(len(f_s[0])):
            for j in range(len(f_s[0][0])):
                h = [grid[i][j] for grid in f_s]
                for k, w in enumerate(weights):
                    h = _relu_matvec(w, h, relu=k < len(weights) - 1)
                for c, mu in enumerate(h):
                    total += 0.5 * ((mu - f_t[c][i][j]) ** 2 / var[c] + math.log(var[c]))
                    count += 1
    return total / count


# ---------------------------------------------------------------- one table drives the reference and generic tests


@dataclass
class Case:
    name: str
    module: type[nn.Module]
    hyperparameters: dict[str, Any]
    function: Callable[[nn.Module, Tensor, Tensor], Tensor]
    reference: Callable[[nn.Module, Tensor, Tensor], float]
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...]
    adapter: bool = False

    def make(self) -> nn.Module:
        return self.module(**self.hyperparameters)


def _fitnets_function(module: FitNetsLoss, student: Tensor, teacher: Tensor) -> Tensor:
    if module.regressor is None:
        return fitnets_loss(student, teacher)
    return fitnets_loss(module.regressor(student, teacher), teacher)


def _vid_function(module: VIDLoss, student: Tensor, teacher: Tensor) -> Tensor:
    return vid_loss(student, teacher, module.adapter.net, module.adapter.net.log_scale, module.eps)


def _at_case(name: str, p: float, s: tuple[int, ...], t: tuple[int, ...]) -> Case:
    return Case(name, ATLoss, {"p": p}, lambda m, a, b: at_loss(a, b, p=p), lambda m, a, b: ref_at(a, b, p), s, t)


def _nst_case(name: str, s: tuple[int, ...], t: tuple[int, ...]) -> Case:
    return Case(name, NSTLoss, {}, lambda m, a, b: nst_loss(a, b), lambda m, a, b: ref_nst(a, b), s, t)


def _fitnets_case(name: str, s: tuple[int, ...], t: tuple[int, ...], adapter: bool = True) -> Case:
    return Case(name, FitNetsLoss, {"adapter": adapter}, _fitnets_function, ref_fitnets, s, t, adapter=adapter)


def _vid_case(name: str, s: tuple[int, ...], t: tuple[int, ...], **kwargs) -> Case:
    return Case(name, VIDLoss, kwargs, _vid_function, ref_vid, s, t, adapter=True)


CASES = [
    _fitnets_case("fitnets_plain", (3, 4, 4, 4), (3, 4, 4, 4), adapter=False),
    _fitnets_case("fitnets_plain_vectors", (3, 5), (3, 5), adapter=False),
    _fitnets_case("fitnets_conv", (3, 3, 4, 4), (3, 5, 4, 4)),
    _fitnets_case("fitnets_conv_pool", (3, 3, 8, 8), (3, 5, 4, 4)),
    _fitnets_case("fitnets_linear", (3, 4), (3, 6)),
    _at_case("at", 2.0, (3, 3, 4, 4), (3, 5, 4, 4)),
    _at_case("at_pool_student", 2.0, (3, 3, 8, 8), (3, 5, 4, 4)),
    _at_case("at_pool_teacher_nonsquare", 2.0, (3, 3, 3, 2), (3, 5, 6, 4)),
    _at_case("at_p3_abs", 3.0, (3, 3, 4, 4), (3, 2, 4, 4)),
    _nst_case("nst", (3, 3, 4, 4), (3, 5, 4, 4)),
    _nst_case("nst_pool_student", (3, 4, 8, 8), (3, 2, 4, 4)),
    _nst_case("nst_pool_teacher", (3, 4, 2, 2), (3, 2, 4, 4)),
    _vid_case("vid", (3, 3, 4, 4), (3, 5, 4, 4)),
    _vid_case("vid_pool_student_hidden", (3, 3, 8, 8), (3, 5, 4, 4), hidden_channels=2, init_pred_var=2.0, eps=1e-3),
    _vid_case("vid_pool_teacher", (3, 3, 2, 2), (3, 4, 4, 4)),
    _vid_case("vid_vectors", (3, 4), (3, 6)),
]
NAMES = {"fitnets_plain", "fitnets_conv_pool", "fitnets_linear", "at", "nst", "vid", "vid_vectors"}
MAIN_CASES = [case for case in CASES if case.name in NAMES]
ADAPTER_CASES = [case for case in MAIN_CASES if case.adapter]


def _ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


def _features(case: Case, seed: int = 0, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(case.student_shape, generator=generator) * scale
    teacher = torch.randn(case.teacher_shape, generator=generator) * scale
    return student, teacher


def _built(case: Case, student: Tensor, teacher: Tensor) -> nn.Module:
    """A module of the case whose adapter (if any) was built on ``student``/``teacher``, with non-trivial BN affine."""
    torch.manual_seed(0)
    module = case.make()
    module(student, teacher)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            with torch.no_grad():
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
    return module


# ---------------------------------------------------------------- the generic checks


def _fitnets_function_form(student: Tensor, teacher: Tensor, adapter: bool) -> Tensor:
    assert not adapter  # the function is the plain MSE; a regressor belongs to the module
    return fitnets_loss(student, teacher)


def _vid_function_form(student: Tensor, teacher: Tensor, eps: float = 1e-5, **module_options: Any) -> Tensor:
    """``vid_loss`` with a fresh 1x1 regressor and zero log-scales: what the function itself checks."""
    regressor = nn.Conv2d(student.shape[1], teacher.shape[1], 1)
    return vid_loss(student, teacher, regressor, torch.zeros(teacher.shape[1]), eps=eps)


FUNCTION_FORMS = {FitNetsLoss: _fitnets_function_form, ATLoss: at_loss, NSTLoss: nst_loss}
DEFAULTS = {
    "fitnets_conv_pool": {"adapter": True},
    "at": {"p": 2.0},
    "vid": {"hidden_channels": None, "init_pred_var": 5.0, "eps": 1e-5},
}
BAD_HYPERPARAMETERS = {
    "at": (
        BadHyperparameter({"p": 0.0}, "expected p > 0"),
        BadHyperparameter({"p": -1.0}, "expected p > 0"),
        BadHyperparameter({"p": float("inf")}, "expected a finite p > 0"),
    ),
    "vid": (
        BadHyperparameter({"eps": 0.0}, "expected eps > 0"),
        BadHyperparameter({"eps": -1.0}, "expected eps > 0"),
        BadHyperparameter({"init_pred_var": 1e-6}, "expected init_pred_var > eps", function=False),
        BadHyperparameter({"hidden_channels": 0}, "expected hidden_channels > 0", function=False),
        BadHyperparameter({"hidden_channels": 2.5}, "expected an integer hidden_channels", function=False),
        BadHyperparameter({"hidden_channels": True}, "expected an integer hidden_channels", function=False),
    ),
}


def _loss_case(case: Case) -> LossCase:
    function = _vid_function_form if case.name == "vid" else FUNCTION_FORMS.get(case.module)
    return LossCase(
        case.name,
        case.module,
        lambda seed: Inputs(*_features(case, seed)),
        case.hyperparameters,
        function=None if case.adapter and case.name != "vid" else function,
        defaults=DEFAULTS.get(case.name, {}),
        bad_hyperparameters=BAD_HYPERPARAMETERS.get(case.name, ()),
        zero_at_equality=not case.adapter,  # a regressor sits between equal inputs
        adapter=case.adapter,
    )


class TestFeatureLosses(LossTester):
    cases = [_loss_case(case) for case in CASES]


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_function_equals_module_equals_reference(case: Case, seed: int) -> None:
    student, teacher = _features(case, seed)
    module = _built(case, student, teacher)
    from_module = module(student, teacher)
    from_function = case.function(module, student, teacher)
    expected = case.reference(module, student, teacher)
    assert from_module.dtype == torch.float32 and from_module.shape == ()
    assert from_module.item() == pytest.approx(from_function.item(), rel=1e-6, abs=1e-7)
    assert from_module.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_at_and_nst_zero_for_teacher_with_more_channels_of_the_same_pattern() -> None:
    """Channel counts may differ: repeating the student's channels does not change its attention or kernel means."""
    student = torch.randn(2, 3, 4, 4).abs()
    teacher = torch.cat([student, student], dim=1)
    assert at_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-7)
    assert nst_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_vid_minimum_is_the_log_variance_floor_not_zero() -> None:
    """With an exact mean prediction the NLL is 0.5 * mean_c log(var_c): the Gaussian floor, not zero."""
    teacher = torch.randn(2, 3, 4, 4)
    log_scale = torch.tensor([-1.0, 0.0, 2.0])
    var = [math.log1p(math.exp(v)) + 1e-5 for v in log_scale.tolist()]
    expected = 0.5 * sum(math.log(v) for v in var) / 3
    assert vid_loss(teacher, teacher, nn.Identity(), log_scale).item() == pytest.approx(expected, rel=1e-6)


def test_vid_initial_variance_and_default_hidden_width() -> None:
    loss = VIDLoss(init_pred_var=5.0, eps=1e-5)
    loss(torch.randn(2, 3, 4, 4), torch.randn(2, 7, 4, 4))
    variance = torch.nn.functional.softplus(loss.adapter.net.log_scale) + 1e-5
    torch.testing.assert_close(variance, torch.full((7,), 5.0))
    assert [layer.weight.shape[:2] for layer in loss.adapter.net.regressor[::2]] == [(7, 3), (7, 7), (7, 7)]
    assert all(layer.bias is None for layer in loss.adapter.net.regressor[::2])


def test_vid_hidden_channels_sets_the_regressor_width() -> None:
    loss = VIDLoss(hidden_channels=11)
    loss(torch.randn(2, 3, 4, 4), torch.randn(2, 7, 4, 4))
    assert [layer.weight.shape[:2] for layer in loss.adapter.net.regressor[::2]] == [(11, 3), (11, 11), (7, 11)]


def test_fitnets_regressor_is_applied_even_when_shapes_agree() -> None:
    """As RepDistiller: with adapter=True the regressor always maps the student (the loss is not the plain MSE)."""
    student = torch.randn(3, 4, 4, 4)
    loss = FitNetsLoss()
    assert loss(student, student).item() > 0
    assert isinstance(loss.regressor.net[0], nn.Conv2d)


# ---------------------------------------------------------------- gradients and adapters


@pytest.mark.parametrize("case", ADAPTER_CASES, ids=_ids(ADAPTER_CASES))
def test_adapter_state_dict_holds_its_shapes_and_parts(case: Case) -> None:
    """The generic check restores the adapters; here: what the state dict of a built adapter is made of."""
    student, teacher = _features(case)
    module = case.make()
    module(student, teacher)
    state = module.state_dict()
    assert any(key.endswith("shapes") for key in state) and len(state) > 1
    if isinstance(module, VIDLoss):
        assert "adapter.net.log_scale" in state and "adapter.net.regressor.0.weight" in state


def test_vid_adapter_is_built_from_channels_and_serves_any_resolution() -> None:
    loss = VIDLoss()
    loss(torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8, 8))
    assert torch.isfinite(loss(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)))


def test_adapter_rejects_a_different_layer_pair() -> None:
    loss = FitNetsLoss()
    loss(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="one loss instance per layer pair"):
        loss(torch.randn(2, 6, 4, 4), torch.randn(2, 5, 4, 4))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("case", MAIN_CASES, ids=_ids(MAIN_CASES))
def test_wrong_ndim_rejected(case: Case) -> None:
    student, teacher = _features(case)
    with pytest.raises(ValueError, match=r"expected a .*-d student tensor but got shape \(3, 2, 2, 2, 2\)"):
        case.make()(torch.randn(3, 2, 2, 2, 2), teacher)
    with pytest.raises(ValueError, match=r"-d teacher tensor but got shape \(3,\)"):
        case.make()(student, torch.randn(3))


@pytest.mark.parametrize(("module", "function"), [(ATLoss(), at_loss), (NSTLoss(), nst_loss)], ids=["at", "nst"])
def test_at_and_nst_need_feature_maps(module: nn.Module, function: Callable[..., Tensor]) -> None:
    with pytest.raises(ValueError, match=r"expected a 4-d student tensor but got shape \(3, 8\)"):
        module(torch.randn(3, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"expected a 4-d teacher tensor"):
        function(torch.randn(3, 8, 2, 2), torch.randn(3, 8))


@pytest.mark.parametrize("make", [FitNetsLoss, VIDLoss], ids=["fitnets", "vid"])
def test_maps_and_vectors_cannot_be_mixed(make: Callable[[], nn.Module]) -> None:
    with pytest.raises(ValueError, match=r"same kind.*both maps or both vectors"):
        make()(torch.randn(3, 8), torch.randn(3, 8, 2, 2))


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"), [((3, 4, 4, 4), (3, 5, 4, 4)), ((3, 4, 8, 8), (3, 4, 4, 4)), ((3, 4), (3, 5))]
)
def test_fitnets_without_adapter_says_pass_adapter_true(student_shape: tuple, teacher_shape: tuple) -> None:
    student, teacher = torch.randn(student_shape), torch.randn(teacher_shape)
    with pytest.raises(ValueError, match=r"fitnets_loss expected .* same shape .*pass adapter=True to FitNetsLoss"):
        FitNetsLoss(adapter=False)(student, teacher)
    with pytest.raises(ValueError, match="pass adapter=True"):
        fitnets_loss(student, teacher)


def test_vid_loss_rejects_a_regressor_of_the_wrong_shape() -> None:
    student, teacher = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    with pytest.raises(ValueError, match=r"regressor output of the teacher's shape .* use VIDLoss"):
        vid_loss(student, teacher, nn.Identity(), torch.zeros(5))
    with pytest.raises(ValueError, match=r"log_scale of shape \(5,\)"):
        vid_loss(student, teacher, nn.Conv2d(3, 5, 1), torch.zeros(3))
