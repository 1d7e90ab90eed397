"""One harness for the checks every distillation loss must pass, in the spirit of torchmetrics' ``MetricTester``.

A loss's test file describes each loss (and each hyperparameter setting worth checking) as a :class:`LossCase` and
lists them on a subclass of :class:`LossTester` (``from losses.loss_tester import ...``: ``tests/`` is on the path)::

    class TestResponseLosses(LossTester):
        cases = [LossCase("kd", KDLoss, logit_inputs, {"temperature": 4.0}, ...), ...]

pytest then runs every generic check below for every case, so the file itself holds only the loss's independent
reference (written from the paper's formula) and its edge cases. The generic checks:

* the value is 0 when the student's inputs equal the teacher's (cases with ``zero_at_equality``);
* the gradient reaches the student (finite, not all zero, and zero at masked-out token positions) and the loss's own
  adapters, never the teacher;
* bf16 inputs give a finite float32 loss close to the float32 one, with a finite bf16 gradient; under bf16 autocast
  the loss is a finite float32 scalar;
* zeros, constants, huge and huge opposite inputs give a finite loss and a finite gradient;
* a teacher batch of another size is rejected with the message ``case.batch_mismatch``;
* bad hyperparameters are rejected by the module and the function, naming the expected value;
* the module's defaults are the documented ones, and its ``repr`` shows its hyperparameters in order;
* an adapter is built on the first call, saved in the state dict, restored strictly into a fresh module, and
  deep-copied (cases with ``adapter``).

Searches over drawn shapes, hyperparameters and arbitrary values (lower bounds, invariances, finiteness on any
finite input) live in ``test_loss_properties.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

Features = Tensor | tuple[Tensor, ...]


def map_features(fn: Callable[[Tensor], Tensor], features: Features) -> Features:
    """Apply ``fn`` to one tensor or to each tensor of a tuple (losses that relate several layers)."""
    return tuple(fn(x) for x in features) if isinstance(features, tuple) else fn(features)


def leaves(features: Features) -> list[Tensor]:
    return list(features) if isinstance(features, tuple) else [features]


@dataclass(frozen=True)
class Inputs:
    """One call's inputs: student and teacher outputs, and ``extra`` keyword arguments (``target``, ``mask``) passed
    to both the module and the function."""

    student: Features
    teacher: Features
    extra: dict[str, Any] = field(default_factory=dict)

    def with_networks(self, student: Features, teacher: Features) -> Inputs:
        return replace(self, student=student, teacher=teacher)


@dataclass(frozen=True)
class BadHyperparameter:
    """Hyperparameters the loss must reject with a ``ValueError`` matching ``message`` (a regex); ``function=False``
    when only the module takes them."""

    kwargs: dict[str, Any]
    message: str
    function: bool = True


@dataclass(frozen=True)
class LossCase:
    """A loss, its hyperparameters and its inputs, as the generic checks need them.

    Attributes:
        name: the test id.
        make: the module factory, called as ``make(**hyperparameters)``.
        inputs: seeded inputs: ``inputs(seed) -> Inputs``.
        hyperparameters: the module's keyword arguments (shown by its ``repr``, in this order).
        function: the functional form, called as ``function(student, teacher, **extra, **hyperparameters)``; ``None``
            when there is none (or it takes other arguments).
        defaults: the attributes of ``make()`` without arguments (the documented defaults); empty: not checked.
        bad_hyperparameters: what the module (and the function) must reject.
        zero_at_equality: whether the loss is 0 (within ``zero_atol``) when the student's inputs equal the teacher's.
        adapter: whether the module owns trainable adapters, built on its first call.
        bf16_rtol: relative tolerance of the bf16 loss against the float32 one (with ``bf16_atol``).
        batch_mismatch: the error for a teacher batch of another size (formatted with ``student`` and ``teacher``).
    """

    name: str
    make: Callable[..., nn.Module]
    inputs: Callable[[int], Inputs]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    function: Callable[..., Tensor] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    bad_hyperparameters: tuple[BadHyperparameter, ...] = ()
    zero_at_equality: bool = True
    zero_atol: float = 1e-6
    adapter: bool = False
    bf16_rtol: float = 0.05
    bf16_atol: float = 1e-3
    batch_mismatch: str = r"batch sizes {student} \(student\) and {teacher} \(teacher\)"

    def module(self, **overrides: Any) -> nn.Module:
        torch.manual_seed(0)  # adapters are initialised at random
        return self.make(**(self.hyperparameters | overrides))

    def loss(self, module: nn.Module, inputs: Inputs) -> Tensor:
        return module(inputs.student, inputs.teacher, **inputs.extra)


def _for(predicate: Callable[[LossCase], bool]) -> Callable[[Callable], Callable]:
    """Run the decorated check only for the cases where ``predicate`` holds."""

    def mark(check: Callable) -> Callable:
        check.applies = predicate
        return check

    return mark


def _requires_grad(features: Features) -> Features:
    return map_features(lambda x: x.detach().clone().requires_grad_(True), features)


def _extreme(name: str, inputs: Inputs) -> Inputs:
    """Degenerate and huge inputs; ``large_opposite``: the teacher is minus the student (-1e4 where shapes differ)."""
    student, teacher = inputs.student, inputs.teacher
    if name == "zeros":
        return inputs.with_networks(map_features(torch.zeros_like, student), map_features(torch.zeros_like, teacher))
    if name == "constant":
        full = lambda value: lambda x: torch.full_like(x, value)  # noqa: E731
        return inputs.with_networks(map_features(full(3.0), student), map_features(full(-2.0), teacher))
    huge = map_features(lambda x: x * 1e4, student)
    if name == "large":
        return inputs.with_networks(huge, map_features(lambda x: x * 1e4, teacher))
    same = [s.shape for s in leaves(student)] == [t.shape for t in leaves(teacher)]
    opposite = map_features(lambda x: -x, huge) if same else map_features(lambda x: -1e4 * torch.ones_like(x), teacher)
    return inputs.with_networks(huge, opposite)


EXTREMES = ("zeros", "constant", "large", "large_opposite")


class LossTester:
    """Generic checks of the loss modules listed in ``cases`` (a subclass per test file sets it)."""

    cases: ClassVar[Sequence[LossCase]] = ()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        applies = getattr(metafunc.function, "applies", lambda case: True)
        cases = [case for case in self.cases if applies(case)]
        if "bad" in metafunc.fixturenames:
            pairs = [(case, bad) for case in cases for bad in case.bad_hyperparameters]
            ids = [f"{case.name}-{','.join(f'{k}={v}' for k, v in bad.kwargs.items())}" for case, bad in pairs]
            metafunc.parametrize(("case", "bad"), pairs, ids=ids)
        elif "case" in metafunc.fixturenames:
            metafunc.parametrize("case", cases, ids=[case.name for case in cases])

    # ------------------------------------------------------------ values

    @_for(lambda case: case.zero_at_equality)
    def test_zero_when_student_equals_teacher(self, case: LossCase) -> None:
        inputs = case.inputs(0)
        equal = inputs.with_networks(inputs.student, map_features(torch.clone, inputs.student))
        assert case.loss(case.module(), equal).item() == pytest.approx(0.0, abs=case.zero_atol)
        if case.function is not None:
            value = case.function(equal.student, equal.teacher, **equal.extra, **case.hyperparameters)
            assert value.item() == pytest.approx(0.0, abs=case.zero_atol)

    # ------------------------------------------------------------ gradients

    def test_gradient_reaches_student_and_adapters_not_teacher(self, case: LossCase) -> None:
        inputs = case.inputs(0)
        student, teacher = _requires_grad(inputs.student), _requires_grad(inputs.teacher)
        module = case.module()
        loss = case.loss(module, inputs.with_networks(student, teacher))
        params = list(module.parameters())
        assert bool(params) == case.adapter
        n_student, n_teacher = len(leaves(student)), len(leaves(teacher))
        grads = torch.autograd.grad(loss, [*leaves(student), *leaves(teacher), *params], allow_unused=True)
        assert all(grad is None for grad in grads[n_student : n_student + n_teacher])
        mask = inputs.extra.get("mask")
        for grad in grads[:n_student]:
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
            if mask is not None:
                assert grad[~mask].abs().max() == 0  # positions outside the mask are never read
        for grad in grads[n_student + n_teacher :]:
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    @pytest.mark.parametrize("extreme", EXTREMES)
    def test_finite_loss_and_gradient_on_extreme_inputs(self, case: LossCase, extreme: str) -> None:
        inputs = _extreme(extreme, case.inputs(0))
        student = _requires_grad(inputs.student)
        loss = case.loss(case.module(), inputs.with_networks(student, inputs.teacher))
        assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(torch.isfinite(grad).all() for grad in torch.autograd.grad(loss, leaves(student)))

    # ------------------------------------------------------------ dtypes

    def test_bfloat16_inputs_give_finite_float32_close_to_float32(self, case: LossCase) -> None:
        inputs = case.inputs(0)
        module = case.module()
        loss32 = case.loss(module, inputs)  # builds the adapters (if any) in float32
        student16 = map_features(lambda x: x.bfloat16().requires_grad_(True), inputs.student)
        teacher16 = map_features(torch.Tensor.bfloat16, inputs.teacher)
        loss16 = case.loss(module, inputs.with_networks(student16, teacher16))
        assert loss16.dtype == torch.float32 and loss16.shape == () and torch.isfinite(loss16)
        for grad in torch.autograd.grad(loss16, leaves(student16)):
            assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()
        assert loss16.item() == pytest.approx(loss32.item(), rel=case.bf16_rtol, abs=case.bf16_atol)

    def test_finite_float32_under_bf16_autocast(self, case: LossCase) -> None:
        module = case.module()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = case.loss(module, case.inputs(0))
        assert loss.dtype == torch.float32 and loss.shape == () and torch.isfinite(loss)

    # ------------------------------------------------------------ errors

    def test_batch_size_mismatch_rejected(self, case: LossCase) -> None:
        inputs = case.inputs(0)
        teacher = map_features(lambda x: x[:-1], inputs.teacher)
        sizes = {"student": leaves(inputs.student)[0].shape[0], "teacher": leaves(teacher)[0].shape[0]}
        with pytest.raises(ValueError, match=case.batch_mismatch.format(**sizes)):
            case.loss(case.module(), inputs.with_networks(inputs.student, teacher))

    @_for(lambda case: bool(case.bad_hyperparameters))
    def test_bad_hyperparameters_rejected(self, case: LossCase, bad: BadHyperparameter) -> None:
        with pytest.raises(ValueError, match=bad.message):
            case.make(**(case.hyperparameters | bad.kwargs))
        if bad.function and case.function is not None:
            inputs = case.inputs(0)
            with pytest.raises(ValueError, match=bad.message):
                case.function(inputs.student, inputs.teacher, **inputs.extra, **(case.hyperparameters | bad.kwargs))

    # ------------------------------------------------------------ module contract

    @_for(lambda case: bool(case.defaults))
    def test_module_defaults(self, case: LossCase) -> None:
        module = case.make()
        assert {name: getattr(module, name) for name in case.defaults} == case.defaults

    def test_repr_shows_hyperparameters_in_order(self, case: LossCase) -> None:
        text = repr(case.module())
        where = [text.find(f"{name}={value!r}") for name, value in case.hyperparameters.items()]
        assert all(index >= 0 for index in where), (text, case.hyperparameters)
        assert where == sorted(where), text

    @_for(lambda case: case.adapter)
    def test_adapter_built_on_first_call_saved_restored_and_copied(self, case: LossCase) -> None:
        inputs = case.inputs(0)
        module = case.module()
        assert not list(module.parameters())
        case.loss(module, inputs)
        assert list(module.parameters())
        with torch.no_grad():
            for param in module.parameters():
                param.add_(0.1 * torch.randn_like(param))
        restored = case.make(**case.hyperparameters)
        restored.load_state_dict(module.state_dict(), strict=True)
        module.eval()
        restored.eval()  # after loading, which builds the restored adapters
        expected = case.loss(module, inputs)
        torch.testing.assert_close(case.loss(restored, inputs), expected, rtol=0, atol=0)
        torch.testing.assert_close(case.loss(copy.deepcopy(module), inputs), expected, rtol=0, atol=0)
