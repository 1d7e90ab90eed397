"""Tests of the relation-based losses against hand-written references (explicit loops, RepDistiller scale).

The generic checks run from ``LossTester`` (``loss_tester.py``) on the cases of :class:`TestRelationLosses`; this file
holds the references and the edge cases.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from losses.loss_tester import BadHyperparameter, Inputs, LossCase, LossTester
from torch import Tensor, nn

from kd_lightning.losses.relation import (
    CCLoss,
    FSPLoss,
    PKTLoss,
    RKDLoss,
    SPLoss,
    cc_loss,
    fsp_loss,
    pkt_loss,
    rkd_loss,
    sp_loss,
)

# ----------------------------------------------------------------------------------------------------------------------
# Independent references: plain Python over nested lists, float64.
# ----------------------------------------------------------------------------------------------------------------------


def _rows(x: Tensor) -> list[list[float]]:
    return x.detach().double().flatten(1).tolist()


def _dot(a: list[float], b: list[float]) -> float:
    return sum(u * v for u, v in zip(a, b, strict=True))


def _smooth_l1(a: float, b: float) -> float:
    diff = abs(a - b)
    return 0.5 * diff * diff if diff < 1.0 else diff - 0.5


def ref_rkd(student: Tensor, teacher: Tensor, w_d: float = 25.0, w_a: float = 50.0) -> float:
    """Park et al.: distances normalised by their mean over i != j; angles at anchor i; smooth-L1 means."""

    def distances(x):
        n = len(x)
        d = [[math.sqrt(sum((x[i][k] - x[j][k]) ** 2 for k in range(len(x[i])))) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mean for j in range(n)] for i in range(n)]

    def unit(v):
        norm = math.sqrt(_dot(v, v))
        return [0.0] * len(v) if norm == 0 else [c / norm for c in v]

    def angles(x):
        n = len(x)
        out = {}
        for i in range(n):
            e = [unit([x[j][k] - x[i][k] for k in range(len(x[i]))]) for j in range(n)]
            for j in range(n):
                for k in range(n):
                    out[i, j, k] = _dot(e[j], e[k])
        return out

    s, t = _rows(student), _rows(teacher)
    n = len(s)
    d_s, d_t = distances(s), distances(t)
    loss_d = sum(_smooth_l1(d_s[i][j], d_t[i][j]) for i in range(n) for j in range(n)) / n**2
    a_s, a_t = angles(s), angles(t)
    loss_a = sum(_smooth_l1(a_s[key], a_t[key]) for key in a_s) / n**3
    return w_d * loss_d + w_a * loss_a


def ref_sp(student: Tensor, teacher: Tensor) -> float:
    """Tung & Mori: row-normalised Gram matrices, squared Frobenius distance / B^2."""

    def gram(x):
        g = [[_dot(a, b) for b in x] for a in x]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]

    g_s, g_t = gram(_rows(student)), gram(_rows(teacher))
    n = len(g_s)
    return sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def ref_pkt(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> float:
    """Passalis & Tefas (authors' code): (cos + 1) / 2, rows normalised, mean of p_t log((p_t + eps) / (p_s + eps))."""

    def distribution(x):
        unit = [[c / (math.sqrt(_dot(v, v)) + eps) for c in v] for v in x]
        sim = [[(_dot(a, b) + 1.0) / 2.0 for b in unit] for a in unit]
        return [[v / sum(row) for v in row] for row in sim]

    p_s, p_t = distribution(_rows(student)), distribution(_rows(teacher))
    n = len(p_s)
    total = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(n) for j in range(n))
    return total / n**2


def _linear(x: Tensor, layer: nn.Linear) -> list[list[float]]:
    weight, bias = layer.weight.detach().double().tolist(), layer.bias.detach().double().tolist()
    return [[_dot(row, w) + b for w, b in zip(weight, bias, strict=True)] for row in _rows(x)]


def ref_cc(e_s: list[list[float]], e_t: list[list[float]]) -> float:
    """RepDistiller ``Correlation``: mean over i < B-1 of sum_k |e^s_ik - e^t_ik| * |e^s_(i+1)k - e^t_(i+1)k|."""
    n = len(e_s)
    delta = [[abs(a - b) for a, b in zip(e_s[i], e_t[i], strict=True)] for i in range(n)]
    return sum(_dot(delta[i], delta[i + 1]) for i in range(n - 1)) / (n - 1)


def _avg_pool(x: list, h: int, w: int) -> list:
    """Average-pool a [C][H][W] nested list to [C][h][w] (H, W divisible by h, w)."""
    kh, kw = len(x[0]) // h, len(x[0][0]) // w
    return [
        [
            [sum(c[a * kh + u][b * kw + v] for u in range(kh) for v in range(kw)) / (kh * kw) for b in range(w)]
            for a in range(h)
        ]
        for c in x
    ]


def ref_fsp(student: tuple[Tensor, Tensor], teacher: tuple[Tensor, Tensor]) -> float:
    """Yim et al.: G[b][i][j] = sum_hw f1[b,i,h,w] f2[b,j,h,w] / (H W) after pooling to the smaller map; MSE."""

    def fsp(pair):
        first, second = (f.detach().double().tolist() for f in pair)
        h = min(len(first[0][0]), len(second[0][0]))
        w = min(len(first[0][0][0]), len(second[0][0][0]))
        out = []
        for f1, f2 in zip(first, second, strict=True):
            p1, p2 = _avg_pool(f1, h, w), _avg_pool(f2, h, w)
            out.append([[sum(a[y][x] * b[y][x] for y in range(h) for x in range(w)) / (h * w) for b in p2] for a in p1])
        return out

    g_s, g_t = fsp(student), fsp(teacher)
    diffs = [
        (g_s[b][i][j] - g_t[b][i][j]) ** 2
        for b in range(len(g_s))
        for i in range(len(g_s[b]))
        for j in range(len(g_s[b][i]))
    ]
    return sum(diffs) / len(diffs)


# ----------------------------------------------------------------------------------------------------------------------
# Function == module == reference on random inputs.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"), [((5, 6), (5, 9)), ((4, 2, 3, 3), (4, 5, 2, 2)), ((3, 4), (3, 4))]
)
@pytest.mark.parametrize(
    ("function", "module", "reference"),
    [
        (rkd_loss, RKDLoss(), ref_rkd),
        (lambda s, t: rkd_loss(s, t, 2.0, 0.5), RKDLoss(2.0, 0.5), lambda s, t: ref_rkd(s, t, 2.0, 0.5)),
        (sp_loss, SPLoss(), ref_sp),
        (pkt_loss, PKTLoss(), ref_pkt),
        (lambda s, t: pkt_loss(s, t, 1e-3), PKTLoss(1e-3), lambda s, t: ref_pkt(s, t, 1e-3)),
    ],
    ids=["rkd", "rkd-weights", "sp", "pkt", "pkt-eps"],
)
def test_sample_relations_match_reference(student_shape, teacher_shape, function, module, reference):
    torch.manual_seed(0)
    student, teacher = torch.randn(student_shape), torch.randn(teacher_shape)
    expected = reference(student, teacher)
    assert function(student, teacher).dtype == torch.float32
    torch.testing.assert_close(function(student, teacher).double().item(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module(student, teacher).item(), function(student, teacher).item(), rtol=0, atol=0)


@pytest.mark.parametrize(("student_shape", "teacher_shape"), [((5, 6), (5, 10)), ((4, 3, 2, 2), (4, 7))])
def test_cc_matches_reference(student_shape, teacher_shape):
    torch.manual_seed(0)
    student, teacher = torch.randn(student_shape), torch.randn(teacher_shape)
    module = CCLoss(embed_dim=4)
    loss = module(student, teacher)
    e_s, e_t = _linear(student, module.embed_student.net), _linear(teacher, module.embed_teacher.net)
    torch.testing.assert_close(loss.double().item(), ref_cc(e_s, e_t), rtol=1e-5, atol=1e-6)
    by_function = cc_loss(student, teacher, module.embed_student.net, module.embed_teacher.net)
    assert by_function.item() == loss.item()
    plain_s, plain_t = torch.randn(5, 6), torch.randn(5, 6)
    torch.testing.assert_close(cc_loss(plain_s, plain_t).double().item(), ref_cc(_rows(plain_s), _rows(plain_t)))


@pytest.mark.parametrize(
    ("student_shapes", "teacher_shapes"),
    [
        (((3, 2, 4, 4), (3, 3, 4, 4)), ((3, 2, 4, 4), (3, 3, 4, 4))),  # same spatial size
        (((2, 3, 8, 8), (2, 4, 4, 4)), ((2, 3, 4, 4), (2, 4, 2, 2))),  # first layer pooled; teacher smaller
        (((2, 2, 2, 6), (2, 3, 4, 3)), ((2, 2, 2, 2), (2, 3, 4, 4))),  # non-square: both layers pooled in one dim
    ],
)
def test_fsp_matches_reference(student_shapes, teacher_shapes):
    torch.manual_seed(0)
    student = tuple(torch.randn(shape) for shape in student_shapes)
    teacher = [torch.randn(shape) for shape in teacher_shapes]
    expected = ref_fsp(student, teacher)
    torch.testing.assert_close(fsp_loss(student, teacher).double().item(), expected, rtol=1e-5, atol=1e-6)
    assert FSPLoss()(student, teacher).item() == fsp_loss(student, teacher).item()


def test_fsp_with_adapter_matches_reference_on_adapted_maps():
    torch.manual_seed(0)
    student = (torch.randn(2, 3, 4, 4), torch.randn(2, 2, 2, 2))
    teacher = (torch.randn(2, 5, 4, 4), torch.randn(2, 6, 2, 2))
    module = FSPLoss(adapter=True)
    loss = module(student, teacher)
    adapted = tuple(adapter.net(s) for adapter, s in zip(module.adapters, student, strict=True))
    assert adapted[0].shape == (2, 5, 4, 4) and adapted[1].shape == (2, 6, 2, 2)
    torch.testing.assert_close(loss.double().item(), ref_fsp(adapted, teacher), rtol=1e-5, atol=1e-6)
    assert fsp_loss(adapted, teacher).item() == loss.item()


# ----------------------------------------------------------------------------------------------------------------------
# The generic checks (zero at equality, gradients, adapters, dtypes, extreme inputs, errors, repr): one case per loss.
# ----------------------------------------------------------------------------------------------------------------------


def _features(student_dims, teacher_dims, batch: int = 6) -> Callable[[int], Inputs]:
    def inputs(seed: int) -> Inputs:
        generator = torch.Generator().manual_seed(seed)
        student = torch.randn((batch, *student_dims), generator=generator)
        return Inputs(student, torch.randn((batch, *teacher_dims), generator=generator))

    return inputs


def _pairs(student_dims, teacher_dims, batch: int = 4) -> Callable[[int], Inputs]:
    def inputs(seed: int) -> Inputs:
        generator = torch.Generator().manual_seed(seed)
        student = tuple(torch.randn((batch, *d), generator=generator) for d in student_dims)
        return Inputs(student, tuple(torch.randn((batch, *d), generator=generator) for d in teacher_dims))

    return inputs


def _fsp_function_form(student, teacher, adapter: bool) -> Tensor:
    assert not adapter  # the 1x1 convolutions belong to the module
    return fsp_loss(student, teacher)


FSP_MAPS = ((3, 8, 8), (5, 4, 4))
CASES = [
    LossCase(
        "rkd",
        RKDLoss,
        _features((8,), (12,)),
        {"distance_weight": 25.0, "angle_weight": 50.0},
        function=rkd_loss,
        defaults={"distance_weight": 25.0, "angle_weight": 50.0},
        bad_hyperparameters=(
            BadHyperparameter({"distance_weight": -1.0}, "distance_weight >= 0"),
            BadHyperparameter({"angle_weight": -0.5}, "angle_weight >= 0"),
            BadHyperparameter({"angle_weight": -1.0}, "angle_weight >= 0"),
        ),
    ),
    LossCase("sp", SPLoss, _features((4, 3, 3), (8, 2, 2)), function=sp_loss),
    LossCase(
        "pkt",
        PKTLoss,
        _features((10,), (6,)),
        {"eps": 1e-7},
        function=pkt_loss,
        defaults={"eps": 1e-7},
        bad_hyperparameters=(
            BadHyperparameter({"eps": 0.0}, "eps > 0"),
            BadHyperparameter({"eps": -1.0}, "eps > 0"),
        ),
    ),
    LossCase(
        "cc",
        CCLoss,
        _features((4, 2, 2), (12,)),
        {"embed_dim": 8},
        bad_hyperparameters=(
            BadHyperparameter({"embed_dim": 0}, "embed_dim > 0"),
            BadHyperparameter({"embed_dim": 2.5}, "integer embed_dim"),
        ),
        zero_at_equality=False,  # two independent random embeddings (test_cc_zero_only_with_tied_embeddings)
        adapter=True,
    ),
    LossCase("fsp", FSPLoss, _pairs(FSP_MAPS, ((3, 4, 4), (5, 4, 4))), {"adapter": False}, function=_fsp_function_form),
    LossCase(
        "fsp-adapter",
        FSPLoss,
        _pairs(FSP_MAPS, ((6, 8, 8), (7, 4, 4))),
        {"adapter": True},
        zero_at_equality=False,
        adapter=True,
    ),
]
CASE = {case.name: case for case in CASES}


class TestRelationLosses(LossTester):
    cases = CASES


@pytest.mark.parametrize("name", ["rkd", "sp", "pkt"])
def test_sample_relations_ignore_teacher_scale(name):
    """Distances normalised by their mean, row-normalised Gram matrices and cosines are invariant to scaling."""
    case = CASE[name]
    student = case.inputs(0).student
    assert case.module()(student, 7.0 * student).item() == pytest.approx(0.0, abs=1e-5)


def test_cc_zero_only_with_tied_embeddings():
    """CC compares embeddings of each sample: zero for equal features only when both embeddings are the same map.

    With two independent random embeddings (the default, as RepDistiller) equal features still give a positive loss.
    """
    torch.manual_seed(0)
    features = torch.randn(6, 10)
    assert cc_loss(features, features.clone()).item() == 0.0
    module = CCLoss(embed_dim=8)
    assert module(features, features.clone()).item() > 0.0
    module.embed_teacher.net.load_state_dict(module.embed_student.net.state_dict())
    assert module(features, features.clone()).item() == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# Errors: shapes and hyperparameters.
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [RKDLoss(), SPLoss(), PKTLoss(), CCLoss()], ids=["rkd", "sp", "pkt", "cc"])
def test_vector_input_raises(module):
    with pytest.raises(ValueError, match=r"expected a 2-d or 3-d or 4-d student tensor but got shape \(6,\)"):
        module(torch.randn(6), torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"4-d teacher tensor but got shape \(6, 1, 1, 1, 1\)"):
        module(torch.randn(6, 3), torch.randn(6, 1, 1, 1, 1))


@pytest.mark.parametrize("module", [RKDLoss(), CCLoss()], ids=["rkd", "cc"])
def test_single_sample_batch_raises(module):
    with pytest.raises(ValueError, match="at least 2 samples but got batch size 1"):
        module(torch.randn(1, 4), torch.randn(1, 4))


def test_cc_function_needs_equal_embedding_sizes():
    with pytest.raises(ValueError, match=r"same shape .* use CCLoss, whose embeddings map both to embed_dim"):
        cc_loss(torch.randn(4, 3), torch.randn(4, 5))


@pytest.mark.parametrize(
    ("student", "teacher", "match"),
    [
        (torch.randn(2, 3, 4, 4), (torch.randn(2, 3, 4, 4),) * 2, "FSP needs two layers .* got a tensor of shape"),
        ((torch.randn(2, 3, 4, 4),) * 3, (torch.randn(2, 3, 4, 4),) * 2, "FSP needs two layers .* a tuple of 3 items"),
        ((torch.randn(2, 3, 4, 4),) * 2, [torch.randn(2, 3, 4, 4)], "FSP needs two layers .* a list of 1 items"),
        ((torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4)), (torch.randn(2, 3, 4, 4),) * 2, "4-d student second-layer"),
        (
            (torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4)),
            (torch.randn(2, 3, 4, 4),) * 2,
            "two layers from the same",
        ),
    ],
)
@pytest.mark.parametrize("adapter", [False, True])
def test_fsp_bad_inputs_raise(student, teacher, match, adapter):
    with pytest.raises(ValueError, match=match):
        FSPLoss(adapter=adapter)(student, teacher)


def test_fsp_channel_mismatch_without_adapter_says_pass_adapter():
    student = (torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    teacher = (torch.randn(2, 3, 4, 4), torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"got 3, 5 \(student\) and 3, 8 \(teacher\); pass adapter=True"):
        FSPLoss()(student, teacher)
    assert torch.isfinite(FSPLoss(adapter=True)(student, teacher))


# ----------------------------------------------------------------------------------------------------------------------
# Adapters (CC embeddings, FSP 1x1 convs).
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cc", "fsp-adapter"])
def test_adapters_are_one_map_per_network_or_layer(name):
    """The generic check builds, saves and restores them; here: CC embeds each network, FSP each student layer."""
    case = CASE[name]
    module = case.module()
    case.loss(module, case.inputs(0))
    assert len([key for key in module.state_dict() if key.endswith("net.weight")]) == 2


def test_cc_embeddings_have_requested_sizes_and_no_normalisation():
    torch.manual_seed(0)
    module = CCLoss(embed_dim=16)
    module(torch.randn(4, 3, 2, 2), torch.randn(4, 20))
    assert isinstance(module.embed_student.net, nn.Linear) and isinstance(module.embed_teacher.net, nn.Linear)
    assert (module.embed_student.net.in_features, module.embed_student.net.out_features) == (12, 16)
    assert (module.embed_teacher.net.in_features, module.embed_teacher.net.out_features) == (20, 16)
