"""Property-based tests (hypothesis) of every distillation loss: finiteness, sign, zero at equality, invariances.

Each loss is described once in ``SPECS``: how to build it (its hyperparameters are drawn too), which input shapes it
accepts, the lower bound its formula guarantees, whether it vanishes when the student equals the teacher, and which
transformations of the inputs it ignores. The sign and finiteness properties hold for every finite input, so they get
arbitrary float32 values drawn by hypothesis (zeros, repeated and extreme values included); the equalities get seeded
``torch.randn`` times a drawn scale (post-ReLU for features), away from the degenerate inputs where a loss's epsilon
rather than its formula decides the value. Losses with lazy adapters are built fresh, from a drawn seed, per example.
These searches draw shapes, hyperparameters and values that no fixed case covers; the fixed-input generic checks of
every loss (gradients, dtypes, errors, repr, ...) run once, from ``LossTester`` (``loss_tester.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from losses.loss_tester import Features, leaves, map_features
from torch import Tensor

from kd_lightning.losses import (
    ATLoss,
    CCLoss,
    DistillationLoss,
    DISTLoss,
    DKDLoss,
    FitNetsLoss,
    FSPLoss,
    KDLoss,
    LSKDLoss,
    NSTLoss,
    PKTLoss,
    RKDLoss,
    SPLoss,
    VIDLoss,
    at_loss,
)

# Few examples per test (a whole run takes well under a minute on one core): ``SEARCH`` for the properties that hold
# for every finite input (where a bug would show), ``CHECK`` for the equalities on generic inputs.
SEARCH = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CHECK = settings(SEARCH, max_examples=10)

Draw = Callable[..., Any]

BATCH = st.integers(2, 8)
CLASSES = st.integers(2, 12)
CHANNELS = st.integers(1, 8)
SIDE = st.integers(1, 6)
SEEDS = st.integers(0, 2**32 - 1)
FINITE = st.floats(-20.0, 20.0, width=32)
TEMPERATURE = st.floats(0.5, 8.0)
WEIGHT = st.floats(0.0, 10.0)
RKD_WEIGHT = st.floats(0.0, 100.0)  # the defaults are 25 (distance) and 50 (angle)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Layout:
    """Shapes (batch first) of each network's layers (one, or two for FSP), and the class count for labels."""

    student: tuple[tuple[int, ...], ...]
    teacher: tuple[tuple[int, ...], ...]
    classes: int | None = None


@dataclass(frozen=True)
class Example:
    student: Features
    teacher: Features
    target: Tensor | None = None


def _batch(example: Example) -> int:
    return leaves(example.student)[0].shape[0]


@st.composite
def logit_layout(draw: Draw) -> Layout:
    batch, classes = draw(BATCH), draw(CLASSES)
    return Layout(((batch, classes),), ((batch, classes),), classes)


def _sample_shape(draw: Draw, batch: int, ndims: tuple[int, ...]) -> tuple[int, ...]:
    ndim = draw(st.sampled_from(ndims))
    if ndim == 2:
        return batch, draw(st.integers(1, 16))
    return (batch, draw(CHANNELS), *(draw(SIDE) for _ in range(ndim - 2)))


@st.composite
def feature_layout(draw: Draw, ndims: tuple[int, ...], same_shape: bool = False, same_kind: bool = True) -> Layout:
    """One layer per network; the teacher has the student's shape, or the same number of dims, or any of ``ndims``."""
    batch = draw(BATCH)
    student = _sample_shape(draw, batch, ndims)
    teacher = student if same_shape else _sample_shape(draw, batch, (len(student),) if same_kind else ndims)
    return Layout((student,), (teacher,))


@st.composite
def fsp_layout(draw: Draw, same_channels: bool) -> Layout:
    """Two maps per network; a pair shares its spatial size half of the time (FSP pools the larger one otherwise)."""
    batch = draw(BATCH)

    def pair(channels: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
        first = (draw(SIDE), draw(SIDE))
        second = first if draw(st.booleans()) else (draw(SIDE), draw(SIDE))
        return (batch, channels[0], *first), (batch, channels[1], *second)

    student_channels = (draw(CHANNELS), draw(CHANNELS))
    teacher_channels = student_channels if same_channels else (draw(CHANNELS), draw(CHANNELS))
    return Layout(pair(student_channels), pair(teacher_channels))


@st.composite
def examples(draw: Draw, layout: Layout, arbitrary: bool) -> Example:
    """Inputs of ``layout``: arbitrary finite floats, or seeded ``randn * scale`` (ReLU-ed half the time: features)."""
    batch = layout.student[0][0]
    if arbitrary:

        def fill(shape: tuple[int, ...]) -> Tensor:
            return torch.from_numpy(draw(arrays(np.float32, shape, elements=FINITE)))

        target = None
        if layout.classes:
            target = torch.from_numpy(draw(arrays(np.int64, (batch,), elements=st.integers(0, layout.classes - 1))))
    else:
        generator = torch.Generator().manual_seed(draw(SEEDS))
        scale = draw(st.floats(0.1, 20.0 if layout.classes else 10.0))
        relu = layout.classes is None and draw(st.booleans())  # post-ReLU feature maps hold exact zeros; logits do not

        def fill(shape: tuple[int, ...]) -> Tensor:
            x = torch.randn(shape, generator=generator) * scale
            return x.relu() if relu else x

        target = torch.randint(layout.classes, (batch,), generator=generator) if layout.classes else None

    def network(shapes: tuple[tuple[int, ...], ...]) -> Features:
        tensors = tuple(fill(shape) for shape in shapes)
        return tensors if len(tensors) > 1 else tensors[0]

    return Example(network(layout.student), network(layout.teacher), target)


# ---------------------------------------------------------------- transformations a loss must ignore

Transform = Callable[[Example, torch.Generator], Example]
RoleTransform = Callable[[Features, torch.Generator], Features]


@dataclass(frozen=True)
class Invariance:
    name: str
    transform: Transform


def _per_tensor(fn: Callable[[Tensor, torch.Generator], Tensor]) -> RoleTransform:
    return lambda features, generator: map_features(lambda x: fn(x, generator), features)


def _on(role: str, fn: RoleTransform) -> Transform:
    """Apply ``fn`` to the student's (``role="student"``) or the teacher's inputs only."""
    return lambda example, generator: replace(example, **{role: fn(getattr(example, role), generator)})


def _both_roles(name: str, fn: RoleTransform) -> tuple[Invariance, ...]:
    return tuple(Invariance(f"{name} of the {role}", _on(role, fn)) for role in ("student", "teacher"))


def _factors(generator: torch.Generator, shape: tuple[int, ...], signed: bool = False) -> Tensor:
    """Random factors in ``[0.2, 5]`` (with random signs when ``signed``)."""
    factors = 0.2 + 4.8 * torch.rand(shape, generator=generator)
    return factors * (2 * torch.randint(0, 2, shape, generator=generator) - 1) if signed else factors


def _per_sample(x: Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def _shift_per_sample(x: Tensor, generator: torch.Generator) -> Tensor:
    return x + 10 * torch.randn(_per_sample(x), generator=generator)


def _scale_and_shift_per_sample(x: Tensor, generator: torch.Generator) -> Tensor:
    return x * _factors(generator, _per_sample(x)) + 10 * torch.randn(_per_sample(x), generator=generator)


def _scale_per_sample(x: Tensor, generator: torch.Generator, signed: bool = False) -> Tensor:
    return x * _factors(generator, _per_sample(x), signed)


def _scale_per_channel_signed(x: Tensor, generator: torch.Generator) -> Tensor:
    return x * _factors(generator, (*x.shape[:2], 1, 1), signed=True)


def _scale_globally_signed(x: Tensor, generator: torch.Generator) -> Tensor:
    return x * _factors(generator, (1,) * x.ndim, signed=True)


def _flip_channel_signs(x: Tensor, generator: torch.Generator) -> Tensor:
    return x * (2 * torch.randint(0, 2, (*x.shape[:2], 1, 1), generator=generator) - 1)


def _permute_channels(x: Tensor, generator: torch.Generator) -> Tensor:
    return x[:, torch.randperm(x.shape[1], generator=generator)]


def _rotate(x: Tensor, generator: torch.Generator) -> Tensor:
    """Multiply the flattened features by a random orthogonal matrix (rotation and reflection), in float64."""
    flat = x.flatten(1).double()
    q, _ = torch.linalg.qr(torch.randn(flat.shape[1], flat.shape[1], generator=generator, dtype=torch.float64))
    return (flat @ q).float().reshape(x.shape)


def _translate(x: Tensor, generator: torch.Generator) -> Tensor:
    """Add one random vector, of the size of the features, to every sample."""
    return x + x.abs().mean() * torch.randn((1, *x.shape[1:]), generator=generator)


def _offset_channels(x: Tensor, generator: torch.Generator) -> Tensor:
    """Add a random constant per channel (the same for every sample and position) to a feature map."""
    assume(x.ndim == 4)
    return x + x.abs().mean() * torch.randn((1, x.shape[1], 1, 1), generator=generator)


def _permute_positions(pair: Features, generator: torch.Generator) -> Features:
    """Permute the spatial positions of a network's two maps (of one size) in the same way."""
    first, second = pair
    assume(first.shape[2:] == second.shape[2:])
    order = torch.randperm(first.shape[2] * first.shape[3], generator=generator)
    return tuple(x.flatten(2)[:, :, order].reshape(x.shape) for x in pair)


def _rebalance_layers(pair: Features, generator: torch.Generator) -> Features:
    """Scale a network's first map by a per-sample factor and its second map by the inverse."""
    factor = _factors(generator, _per_sample(pair[0]), signed=True)
    return pair[0] * factor, pair[1] / factor


def _reorder(example: Example, order: Tensor) -> Example:
    target = None if example.target is None else example.target[order]
    return Example(
        map_features(lambda x: x[order], example.student), map_features(lambda x: x[order], example.teacher), target
    )


def _permute_batch(example: Example, generator: torch.Generator) -> Example:
    return _reorder(example, torch.randperm(_batch(example), generator=generator))


def _reverse_batch(example: Example, generator: torch.Generator) -> Example:
    return _reorder(example, torch.arange(_batch(example) - 1, -1, -1))


def _permute_classes(example: Example, generator: torch.Generator) -> Example:
    """Reorder the classes of both networks' logits in the same way, relabelling the targets to match."""
    order = torch.randperm(example.student.shape[1], generator=generator)
    target = None if example.target is None else torch.argsort(order)[example.target]
    return Example(example.student[:, order], example.teacher[:, order], target)


def _translate_both(example: Example, generator: torch.Generator) -> Example:
    """Add the same random tensor to the student's and the teacher's inputs."""
    offset = example.teacher.abs().mean() * torch.randn(example.teacher.shape, generator=generator)
    return replace(example, student=example.student + offset, teacher=example.teacher + offset)


def _swap(example: Example, generator: torch.Generator) -> Example:
    return replace(example, student=example.teacher, teacher=example.student)


PERMUTE_BATCH = Invariance("the same permutation of the batch for both networks (and the labels)", _permute_batch)
PERMUTE_CLASSES = Invariance("the same permutation of the classes for both networks", _permute_classes)
SWAP = Invariance("swapping student and teacher (the formula is symmetric)", _swap)
SHIFT_LOGITS = _both_roles("per-sample logit shift", _per_tensor(_shift_per_sample))
ROTATE = _both_roles("orthogonal transform of the flattened features", _per_tensor(_rotate))
SCALE_GLOBALLY = _both_roles("non-zero scaling (any sign)", _per_tensor(_scale_globally_signed))
OFFSET_STUDENT_CHANNELS = _on("student", _per_tensor(_offset_channels))
PERMUTE_STUDENT_POSITIONS = _on("student", _permute_positions)

# ---------------------------------------------------------------- one spec per loss


@dataclass(frozen=True)
class Spec:
    name: str
    make: Callable[[Draw], DistillationLoss]  # draws the hyperparameters
    layout: st.SearchStrategy[Layout]
    lower_bound: float | None  # what the formula guarantees for every input; None: no sign guarantee
    zero_at_equality: bool  # the loss vanishes when the student's inputs equal the teacher's
    invariances: tuple[Invariance, ...] = ()
    rtol: float = 1e-4
    atol: float = 1e-5  # times weight(module): float32 rounding grows with the factors in front of the formula
    weight: Callable[[Any], float] = lambda module: 1.0
    condition: Callable[[Any, Example], bool] = lambda module, example: True  # where invariances hold in float32

    def tolerance(self, module: DistillationLoss) -> float:
        return self.atol * self.weight(module)


def _dist(draw: Draw) -> DISTLoss:
    return DISTLoss(beta=draw(st.floats(0.0, 2.0)), gamma=draw(st.floats(0.0, 2.0)), temperature=draw(TEMPERATURE))


def _vid(draw: Draw) -> VIDLoss:
    hidden = draw(st.none() | st.integers(1, 8))
    return VIDLoss(hidden_channels=hidden, init_pred_var=draw(st.floats(0.01, 10.0)))


MAPS = feature_layout((4,))
MAPS_OR_VECTORS = feature_layout((2, 4))
ANY_FEATURES = feature_layout((2, 3, 4), same_kind=False)

SPECS = [
    # Response: T**2 * KL >= 0 (DKD: weights >= 0 times two KLs); log-softmax ignores a per-sample logit shift.
    Spec(
        "kd",
        lambda draw: KDLoss(temperature=draw(TEMPERATURE)),
        logit_layout(),
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(*SHIFT_LOGITS, PERMUTE_BATCH, PERMUTE_CLASSES),
        weight=lambda m: m.temperature**2,
    ),
    Spec(
        "dkd",
        lambda draw: DKDLoss(alpha=draw(WEIGHT), beta=draw(WEIGHT), temperature=draw(TEMPERATURE)),
        logit_layout(),
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(*SHIFT_LOGITS, PERMUTE_BATCH, PERMUTE_CLASSES),
        weight=lambda m: m.temperature**2 * (m.alpha + m.beta),
    ),
    # 1 - pearson >= 0 since |pearson| <= |a||b| / (|a||b| + eps) < 1. Not zero at equality: eps sets a floor there,
    # which test_dist_at_equality_is_exactly_its_eps_floor pins down. The correlation of a (nearly) constant row or
    # column of probabilities hinges on float32 rounding: the invariances are checked where they all vary.
    Spec(
        "dist",
        _dist,
        logit_layout(),
        lower_bound=0.0,
        zero_at_equality=False,
        invariances=(*SHIFT_LOGITS, PERMUTE_BATCH, PERMUTE_CLASSES, SWAP),
        weight=lambda m: m.temperature**2 * (m.beta + m.gamma),
        condition=lambda module, example: _probabilities_vary(module, example),
    ),
    # KL >= 0; the z-score removes a per-sample positive scale and shift (up to its eps=1e-7 next to the std).
    Spec(
        "ls_kd",
        lambda draw: LSKDLoss(temperature=draw(TEMPERATURE)),
        logit_layout(),
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(
            *_both_roles("per-sample positive scaling and shift", _per_tensor(_scale_and_shift_per_sample)),
            PERMUTE_BATCH,
            PERMUTE_CLASSES,
        ),
        weight=lambda m: m.temperature**2,
    ),
    # Feature: mean squared error >= 0.
    Spec(
        "fitnets",
        lambda draw: FitNetsLoss(adapter=False),
        feature_layout((2, 4), same_shape=True),
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(
            PERMUTE_BATCH,
            SWAP,
            Invariance("the same translation of both networks", _translate_both),
        ),
    ),
    # The regressor sits between the student and the MSE: equal inputs do not give zero. Its BatchNorm (train mode)
    # subtracts each channel's batch mean, so a per-channel offset of a student map is normalised away.
    Spec(
        "fitnets_adapter",
        lambda draw: FitNetsLoss(adapter=True),
        MAPS_OR_VECTORS,
        lower_bound=0.0,
        zero_at_equality=False,
        invariances=(PERMUTE_BATCH, Invariance("per-channel offset of the student map", OFFSET_STUDENT_CHANNELS)),
        rtol=1e-3,
    ),
    # Mean of squared differences >= 0; the L2-normalised map of |f|^p ignores per-sample scaling and the sign of each
    # channel, and the channel mean ignores the channel order. Not the sign of each element: a larger map is average-
    # pooled, signs included, before |.|^p (as RepDistiller). p below 1 included (|f| is clamped at zero).
    Spec(
        "at",
        lambda draw: ATLoss(p=draw(st.floats(0.5, 4.0))),
        MAPS,
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(
            *_both_roles("per-sample non-zero scaling", _per_tensor(lambda x, g: _scale_per_sample(x, g, signed=True))),
            *_both_roles("per-sample sign flips of channels", _per_tensor(_flip_channel_signs)),
            *_both_roles("channel permutation", _per_tensor(_permute_channels)),
            PERMUTE_BATCH,
            SWAP,
        ),
    ),
    # Squared MMD with the kernel (u.v)^2 = <u u^T, v v^T>: the squared distance of two mean embeddings, >= 0 (up to
    # cancellation). Each channel is L2-normalised and the kernel is squared: per-channel scaling of any sign is
    # ignored, and the means over channels ignore their order.
    Spec(
        "nst",
        lambda draw: NSTLoss(),
        MAPS,
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(
            *_both_roles("per-sample, per-channel non-zero scaling", _per_tensor(_scale_per_channel_signed)),
            *_both_roles("channel permutation", _per_tensor(_permute_channels)),
            PERMUTE_BATCH,
            SWAP,
        ),
    ),
    # A Gaussian NLL with the constant dropped: 0.5 * log(var) < 0 for var < 1, so no sign (its lower bound is
    # test_vid_is_bounded_below_by_half_its_mean_log_variance); the regressor keeps equal inputs from giving zero.
    Spec("vid", _vid, MAPS_OR_VECTORS, lower_bound=None, zero_at_equality=False, invariances=(PERMUTE_BATCH,)),
    # Relation: smooth-L1 >= 0. Distances over their mean and angles between difference vectors are unchanged by
    # rotations, non-zero scalings and translations of a whole embedding.
    Spec(
        "rkd",
        lambda draw: RKDLoss(distance_weight=draw(RKD_WEIGHT), angle_weight=draw(RKD_WEIGHT)),
        ANY_FEATURES,
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(
            *ROTATE,
            *SCALE_GLOBALLY,
            *_both_roles("translation", _per_tensor(_translate)),
            PERMUTE_BATCH,
            SWAP,
        ),
        rtol=1e-3,
        atol=1e-6,
        weight=lambda m: m.distance_weight + m.angle_weight,
    ),
    # Squared Frobenius norm >= 0; f f^T is unchanged by rotations, and its row normalisation removes a global scale.
    Spec(
        "sp",
        lambda draw: SPLoss(),
        ANY_FEATURES,
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(*ROTATE, *SCALE_GLOBALLY, PERMUTE_BATCH, SWAP),
    ),
    # sum_j p_j log((p_j + eps) / (q_j + eps)) over a row is a KL up to eps: its minimum over q is
    # sum_j p_j log(1 + eps / p_j) - log(1 + B eps) >= -B eps (Jensen), so the mean over B**2 entries is >= -eps.
    # Cosine similarities are unchanged by rotations and per-sample positive scaling (up to eps next to the norms),
    # except between opposite samples (always so for 1-d features of opposite signs): their similarity (1 + cos) / 2
    # is 0, and the eps next to the norms, not the features, then decides the student's log ratio.
    Spec(
        "pkt",
        lambda draw: PKTLoss(),
        ANY_FEATURES,
        lower_bound=-1e-7,
        zero_at_equality=True,
        invariances=(
            *ROTATE,
            *_both_roles("per-sample positive scaling", _per_tensor(_scale_per_sample)),
            PERMUTE_BATCH,
        ),
        rtol=1e-3,
        atol=1e-6,
        condition=lambda module, example: not _has_opposite_samples(example.student),
    ),
    # Products of |e_s - e_t| >= 0 (not signed: RepDistiller's form takes the absolute value). Consecutive samples
    # are paired, so only reversing the batch (the same pairs) is ignored, not any permutation; independent
    # embeddings keep equal inputs from giving zero.
    Spec(
        "cc",
        lambda draw: CCLoss(embed_dim=draw(st.integers(1, 16))),
        ANY_FEATURES,
        lower_bound=0.0,
        zero_at_equality=False,
        invariances=(Invariance("reversing the batch", _reverse_batch),),
    ),
    # Mean of squared differences >= 0; the FSP matrix sums over positions (ignores their order within a network)
    # and is bilinear in the two maps (a per-sample factor on one map cancels against its inverse on the other).
    Spec(
        "fsp",
        lambda draw: FSPLoss(),
        fsp_layout(same_channels=True),
        lower_bound=0.0,
        zero_at_equality=True,
        invariances=(
            *_both_roles("the same permutation of the positions of both layers", _permute_positions),
            *_both_roles("inverse per-sample factors on the two layers", _rebalance_layers),
            PERMUTE_BATCH,
            SWAP,
        ),
        rtol=1e-3,
    ),
    # The 1x1 convolutions commute with a permutation of positions; equal inputs do not give zero through them.
    Spec(
        "fsp_adapter",
        lambda draw: FSPLoss(adapter=True),
        fsp_layout(same_channels=False),
        lower_bound=0.0,
        zero_at_equality=False,
        invariances=(
            Invariance("the same permutation of the positions of the student's layers", PERMUTE_STUDENT_POSITIONS),
            PERMUTE_BATCH,
        ),
        rtol=1e-3,
    ),
]
SPEC = {spec.name: spec for spec in SPECS}
INVARIANCES = [(spec, invariance) for spec in SPECS for invariance in spec.invariances]


def _probabilities_vary(module: DISTLoss, example: Example, threshold: float = 1e-3) -> bool:
    """Whether every row and every column of both networks' ``softmax(z / tau)`` has a centred norm >= threshold."""
    for logits in (example.student, example.teacher):
        probs = F.softmax(logits / module.temperature, dim=1)
        if min((probs - probs.mean(d, keepdim=True)).norm(dim=d).min().item() for d in (0, 1)) < threshold:
            return False
    return True


def _has_opposite_samples(features: Tensor, margin: float = 1e-3) -> bool:
    """Whether two non-zero samples point (almost) in opposite directions: ``1 + cos < margin``."""
    flat = features.flatten(1).double()
    unit = flat[flat.norm(dim=1) > 0]
    unit = unit / unit.norm(dim=1, keepdim=True)
    return bool((1 + unit @ unit.t() < margin).any())


def _draw_case(data: st.DataObject, spec: Spec, arbitrary: bool) -> tuple[DistillationLoss, Example]:
    torch.manual_seed(data.draw(SEEDS, label="adapter seed"))  # lazy adapters are initialised on the first call
    module = spec.make(data.draw)
    return module, data.draw(examples(data.draw(spec.layout, label="layout"), arbitrary), label="example")


def _loss(module: DistillationLoss, example: Example) -> Tensor:
    return module(example.student, example.teacher, example.target)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
@SEARCH
@given(data=st.data())
def test_finite_float32_scalar_with_finite_gradients(spec: Spec, data: st.DataObject) -> None:
    """For any finite input of any float dtype: a finite float32 scalar, finite gradients for student and adapters."""
    module, example = _draw_case(data, spec, arbitrary=True)
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), label="dtype")
    student = map_features(lambda x: x.to(dtype).requires_grad_(True), example.student)
    loss = module(student, map_features(lambda x: x.to(dtype), example.teacher), example.target)
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    grads = torch.autograd.grad(loss, [*leaves(student), *module.parameters()])
    assert all(torch.isfinite(grad).all() for grad in grads)


SIGNED = [spec for spec in SPECS if spec.lower_bound is not None]


@pytest.mark.parametrize("spec", SIGNED, ids=[spec.name for spec in SIGNED])
@SEARCH
@given(data=st.data())
def test_lower_bound_of_the_formula(spec: Spec, data: st.DataObject) -> None:
    module, example = _draw_case(data, spec, arbitrary=True)
    assert _loss(module, example).item() >= spec.lower_bound - spec.tolerance(module)


ZERO = [spec for spec in SPECS if spec.zero_at_equality]


@pytest.mark.parametrize("spec", ZERO, ids=[spec.name for spec in ZERO])
@CHECK
@given(data=st.data())
def test_zero_when_student_equals_teacher(spec: Spec, data: st.DataObject) -> None:
    module, example = _draw_case(data, spec, arbitrary=False)
    loss = module(example.student, map_features(torch.clone, example.student), example.target)
    assert abs(loss.item()) <= spec.tolerance(module)


@pytest.mark.parametrize(
    ("spec", "invariance"), INVARIANCES, ids=[f"{spec.name}: {invariance.name}" for spec, invariance in INVARIANCES]
)
@CHECK
@given(data=st.data())
def test_invariance(spec: Spec, invariance: Invariance, data: st.DataObject) -> None:
    module, example = _draw_case(data, spec, arbitrary=False)
    assume(spec.condition(module, example))
    generator = torch.Generator().manual_seed(data.draw(SEEDS, label="transform seed"))
    expected = _loss(module, example)
    transformed = _loss(module, invariance.transform(example, generator))
    torch.testing.assert_close(transformed, expected, rtol=spec.rtol, atol=spec.tolerance(module))


@SEARCH
@given(data=st.data())
def test_vid_is_bounded_below_by_half_its_mean_log_variance(data: st.DataObject) -> None:
    """0.5 * ((mu - t)^2 / var + log var) >= 0.5 * log var per element: the loss is >= 0.5 * mean_c log(var_c)."""
    module, example = _draw_case(data, SPEC["vid"], arbitrary=True)
    _loss(module, example)  # builds the adapter
    with torch.no_grad():
        module.adapter.net.log_scale.copy_(3 * torch.randn_like(module.adapter.net.log_scale))
    log_var = (F.softplus(module.adapter.net.log_scale) + module.eps).log()
    assert _loss(module, example).item() >= 0.5 * log_var.mean().item() - 1e-5


@CHECK
@given(data=st.data())
def test_dist_at_equality_is_exactly_its_eps_floor(data: st.DataObject) -> None:
    """``1 - pearson(y, y) = eps / (|y - mean(y)|^2 + eps)`` with DIST's eps=1e-8 on the product of the norms.

    So the loss of a student equal to its teacher is ~0 only where every probability row and every class column
    varies; a class whose probability is tiny for the whole batch costs ``~gamma * tau**2 / C`` however well the
    student matches.
    """
    module, example = _draw_case(data, SPEC["dist"], arbitrary=False)
    probs = F.softmax(example.student / module.temperature, dim=1)
    floor = [(1e-8 / ((probs - probs.mean(d, keepdim=True)).norm(dim=d) ** 2 + 1e-8)).mean() for d in (1, 0)]
    expected = module.temperature**2 * (module.beta * floor[0] + module.gamma * floor[1])
    weights = module.temperature**2 * (module.beta + module.gamma)
    loss = module(example.student, example.student.clone())
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6 * weights + 1e-7)


def test_at_gradient_is_finite_for_p_below_one_on_zeros() -> None:
    """d|f|^p/d|f| = p * 0**(p-1) is infinite at exact zeros (post-ReLU features) for p < 1: at_loss clamps |f|."""
    student = torch.tensor([[1.0, 0.0], [2.0, 3.0]]).expand(2, 3, 2, 2).clone().requires_grad_(True)
    at_loss(student, torch.rand(2, 3, 2, 2), p=0.5).backward()
    assert torch.isfinite(student.grad).all()
