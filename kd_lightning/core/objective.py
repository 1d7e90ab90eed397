"""The training objective: ``ce_weight * CE(student, y) + sum_i weight_i(epoch) * loss_i(student, teacher)``.

A :class:`DistillTerm` is one distillation loss, its weight (optionally ramped up linearly over the first epochs, as
DKD's warm-up) and the outputs it compares: ``"logits"`` or ``named_modules()`` paths of the student and of the
teacher (a list of paths for multi-layer relations such as FSP). :class:`Objective` sums the hard-label loss and the
terms and returns every weighted component by name, so each one can be logged.

The targets are a :class:`~kd_lightning.core.tokens.Targets`: class indices ``[B]`` (``-100`` marks an unlabelled
sample of a mixed transfer set), none for a label-free batch (then ``ce_weight`` must be 0), or, for sequences, the
token targets: the hard loss is then the model's masked- or causal-LM loss and the token-level terms read the positions
they select, normalised per real token of the effective batch. Plain labels (a tensor, or ``None``) are accepted too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.core.context import context_names, resolve_context
from kd_lightning.core.taps import LOGITS
from kd_lightning.core.tokens import IGNORE_INDEX, Targets, as_targets
from kd_lightning.losses.base import ANY_LAYERS
from kd_lightning.losses.token import token_cross_entropy

Outputs = Mapping[str, Tensor]
LayerSpec = str | Sequence[str]
Target = Targets | Tensor | None
"""A :class:`~kd_lightning.core.tokens.Targets`, or plain labels (``[B]``, ``[B, L]``, ``None``)."""


def _as_names(spec: LayerSpec) -> tuple[str, ...]:
    return (spec,) if isinstance(spec, str) else tuple(spec)


def _default_name(loss: nn.Module) -> str:
    """``KDLoss`` -> ``kd``, ``FitNetsLoss`` -> ``fitnets``, ``RKDLoss`` -> ``rkd``."""
    return re.sub(r"Loss$", "", type(loss).__name__).lower() or "term"


def _check_loss(loss: object) -> None:
    """Raise unless ``loss`` is a loss *module* instance; a loss function or class gets the module form to use."""
    if isinstance(loss, nn.Module):
        return
    name = getattr(loss, "__name__", type(loss).__name__)
    module_form = _module_form(name)
    if isinstance(loss, type):
        fix = f"pass an instance, {name}(...)"
    elif callable(loss):
        fix = f"pass the module form {module_form}(...)" if module_form else "wrap the function in a DistillationLoss"
    else:
        fix = "pass a loss module such as kd_lightning.losses.KDLoss(temperature=4.0)"
    raise TypeError(
        f"expected DistillTerm's loss to be a loss module (an nn.Module with forward(student, teacher, target=None)) "
        f"but got {name!r}; {fix}. In YAML: loss: {{class_path: kd_lightning.losses.KDLoss}}."
    )


def _module_form(function_name: str) -> str | None:
    """``kd_loss`` -> ``kd_lightning.losses.KDLoss``: the loss module that wraps a loss function of the library."""
    from kd_lightning import losses

    wanted = function_name.replace("_", "").lower()
    for name in losses.__all__:
        if name[0].isupper() and name.lower() == wanted:
            return f"kd_lightning.losses.{name}"
    return None


def _check_layer_count(loss: nn.Module, student: LayerSpec, teacher: LayerSpec) -> bool:
    """Check the layer names against ``loss.layers_per_network``; return whether the loss reads tuples of outputs.

    Losses without the attribute (custom ones) get a tensor for a name and a tuple for a list, unchecked.
    """
    expected = getattr(loss, "layers_per_network", None)
    given = {"student": student, "teacher": teacher}
    if expected is None:
        return not isinstance(student, str)
    if expected == ANY_LAYERS:  # a layer map: any number of (student, teacher) layer pairs, always as tuples
        return True
    loss_name = type(loss).__name__
    if expected == 1:
        for role, spec in given.items():
            if not isinstance(spec, str) and len(spec) != 1:
                raise ValueError(
                    f"{loss_name} compares one output of each network but got {role}={list(spec)}; pass one name "
                    f"(e.g. {role}: {spec[0]}), and add one DistillTerm per layer pair to use several layers."
                )
        return False
    for role, spec in given.items():
        if isinstance(spec, str) or len(spec) != expected:
            shown = repr(spec) if isinstance(spec, str) else list(spec)
            raise ValueError(
                f"{loss_name} relates {expected} layers of each network but got {role}={shown}; pass a list of "
                f"{expected} module names for both networks, e.g. student: [stem, layer1], teacher: [layer1, layer2]."
            )
    return True


class DistillTerm(nn.Module):
    """One weighted distillation loss between chosen student and teacher outputs.

    Args:
        loss: an ``nn.Module`` with ``forward(student, teacher, target=None) -> scalar`` (see ``kd_lightning.losses``).
        weight: multiplier of the loss (``>= 0``).
        student: what the loss reads from the student: ``"logits"`` or a ``named_modules()`` path such as ``layer3``;
            a list of paths passes a tuple of tensors (multi-layer relations).
        teacher: the same for the teacher; defaults to ``student``.
        warmup_epochs: ramp the weight linearly as ``weight * min((epoch + 1) / warmup_epochs, 1)`` (0 = off).
        name: the key under which the weighted loss is logged (``train/<name>``); defaults to the loss class name
            without ``Loss``, lower-cased (``kd``, ``at``, ``rkd``).

    Example:
        >>> from kd_lightning.losses import KDLoss
        >>> term = DistillTerm(KDLoss(temperature=4.0), weight=0.9)
        >>> logits = {"logits": torch.randn(8, 10)}
        >>> float(term(logits, logits)) < 1e-6
        True
    """

    def __init__(
        self,
        loss: nn.Module,
        weight: float = 1.0,
        student: LayerSpec = LOGITS,
        teacher: LayerSpec | None = None,
        warmup_epochs: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        _check_loss(loss)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"expected a DistillTerm weight >= 0 but got weight={weight} for {type(loss).__name__}.")
        if warmup_epochs < 0:
            raise ValueError(f"expected warmup_epochs >= 0 but got warmup_epochs={warmup_epochs}.")
        self.student_names = _as_names(student)
        self.teacher_names = _as_names(teacher if teacher is not None else student)
        if not self.student_names or len(self.student_names) != len(self.teacher_names):
            raise ValueError(
                f"expected the same (non-zero) number of student and teacher outputs but got student "
                f"{list(self.student_names)} and teacher {list(self.teacher_names)} for {type(loss).__name__}."
            )
        self.multi_layer = _check_layer_count(loss, student, teacher if teacher is not None else student)
        self.context_names = context_names(loss)
        self.loss = loss
        self.weight = float(weight)
        self.warmup_epochs = warmup_epochs
        self.name = name or _default_name(loss)

    def weight_at(self, epoch: int) -> float:
        """The weight in this (0-based) epoch, after the linear warm-up."""
        if self.warmup_epochs == 0:
            return self.weight
        return self.weight * min((epoch + 1) / self.warmup_epochs, 1.0)

    def select(self, outputs: Outputs, names: Sequence[str]) -> Tensor | tuple[Tensor, ...]:
        """Pick this term's inputs from a ``{name: tensor}`` dict: one tensor, or a tuple for a list of names."""
        selected = tuple(outputs[name] for name in names)
        return selected if self.multi_layer else selected[0]

    @property
    def token_kind(self) -> str | None:
        """``"logits"`` or ``"hidden"`` for a per-token sequence loss (a ``TokenLoss``), else ``None``."""
        return getattr(self.loss, "token_kind", None)

    def forward(self, student: Outputs, teacher: Outputs, target: Target = None, epoch: int = 0) -> Tensor:
        """Weighted loss; teacher outputs are detached (a target, never trained through this term).

        A token-level loss gets the positions its ``positions`` rule selects (``"hidden"`` for hidden-state losses)
        and their normaliser from the token targets; a classification loss gets the labels. A loss that declares
        ``batch_context`` also gets those keyword arguments (:mod:`kd_lightning.core.context`).
        """
        student_inputs = self.select(student, self.student_names)
        teacher_inputs = self.select(teacher, self.teacher_names)
        if isinstance(teacher_inputs, tuple):
            teacher_inputs = tuple(t.detach() for t in teacher_inputs)
        else:
            teacher_inputs = teacher_inputs.detach()
        weight = self.weight_at(epoch)
        target = as_targets(target)
        if self.token_kind is None:
            extra = resolve_context(self.context_names, target, None)
            return weight * self.loss(student_inputs, teacher_inputs, target.labels, **extra)
        first = student_inputs[0] if isinstance(student_inputs, tuple) else student_inputs
        tokens = target.for_outputs(first)
        rule = "hidden" if self.token_kind == "hidden" else getattr(self.loss, "positions", "real")
        extra = resolve_context(self.context_names, tokens, rule)
        value = self.loss(
            student_inputs, teacher_inputs, tokens.labels, tokens.mask(rule), tokens.num_tokens(rule), **extra
        )
        return weight * value

    def describe(self) -> str:
        """``KDLoss on student logits vs teacher logits``: what the term compares, for error messages."""
        student, teacher = ", ".join(self.student_names), ", ".join(self.teacher_names)
        return f"{type(self.loss).__name__} on student {student} vs teacher {teacher}"

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, weight={self.weight}, student={list(self.student_names)}, "
            f"teacher={list(self.teacher_names)}, warmup_epochs={self.warmup_epochs}"
        )


def _unique_names(terms: Sequence[DistillTerm]) -> None:
    """Rename terms in place so every logged key is unique (``at_layer1``, ``at_layer2``, then ``at_2``...)."""
    seen: set[str] = {"ce", "loss"}
    base_counts: dict[str, int] = {}
    for term in terms:
        base_counts[term.name] = base_counts.get(term.name, 0) + 1
    for index, term in enumerate(terms):
        name = term.name
        if base_counts[name] > 1:
            name = f"{name}_{'_'.join(term.student_names)}".replace(".", "_")
        if name in seen:
            name = f"{name}_{index}"
        term.name = name
        seen.add(name)


class Objective(nn.Module):
    """Hard-label cross-entropy plus a list of distillation terms, returned as a dict of weighted components.

    Args:
        terms: the distillation terms.
        ce_weight: weight of the cross-entropy with the labels (``>= 0``).
        label_smoothing: label smoothing of the cross-entropy.

    ``forward`` returns ``{"ce": ce_weight * CE, term.name: weighted term, ...}``; the total loss is their sum. With
    ``ce_weight=0``, or for a batch without labels (the unlabelled part of a mixed transfer set), there is no ``"ce"``:
    the Lightning modules refuse ``ce_weight > 0`` before training when the training data has no labels at all.
    """

    def __init__(self, terms: Sequence[DistillTerm] = (), ce_weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not ce_weight >= 0:
            raise ValueError(f"expected ce_weight >= 0 but got ce_weight={ce_weight}.")
        for term in terms:
            if not isinstance(term, DistillTerm):
                raise TypeError(f"expected DistillTerm items in terms but got {type(term).__name__}.")
        _unique_names(list(terms))
        self.terms = nn.ModuleList(terms)
        self.ce_weight = float(ce_weight)
        self.label_smoothing = label_smoothing

    @property
    def student_layers(self) -> list[str]:
        """Every student output the terms read (module paths and ``logits``), in order, without repeats."""
        return list(dict.fromkeys(name for term in self.terms for name in term.student_names))

    @property
    def teacher_layers(self) -> list[str]:
        """Every teacher output the terms read, in order, without repeats."""
        return list(dict.fromkeys(name for term in self.terms for name in term.teacher_names))

    def forward(self, student: Outputs, teacher: Outputs | None, target: Target, epoch: int = 0) -> dict[str, Tensor]:
        losses = {}
        target = as_targets(target)
        if self.ce_weight > 0 and target.has_labels:
            losses["ce"] = self.ce_weight * hard_label_loss(student[LOGITS], target, self.label_smoothing)
        if self.terms and teacher is None:
            raise ValueError("distillation terms need teacher outputs but got none; use a module with a teacher.")
        for term in self.terms:
            try:
                losses[term.name] = term(student, teacher, target, epoch)
            except ValueError as error:
                raise ValueError(f"distillation term {term.name!r} ({term.describe()}): {error}") from error
        return losses


def missing_labels_error() -> ValueError:
    """The error of a hard-label loss asked of data without labels."""
    return ValueError(
        "the hard-label loss needs labels but the batch has none (a label-free transfer set); set the model's "
        "ce_weight: 0 to learn from the teacher alone, or use data with labels (TextDataModule task: mlm or clm)."
    )


def hard_label_loss(logits: Tensor, target: Target, label_smoothing: float = 0.0) -> Tensor:
    """The hard-label loss: cross-entropy of logits ``[B, C]`` with class indices ``[B]``, averaged over the labelled
    samples (``-100`` is an unlabelled sample; a batch with none gives 0), or the masked-/causal-LM loss of logits
    ``[B, L, V]`` over the labelled tokens (token :class:`~kd_lightning.core.tokens.Targets`, per real token of the
    effective batch).

    A label outside ``[0, C)`` is a clear error; so is a batch without labels.
    """
    target = as_targets(target)
    if not target.has_labels:
        raise missing_labels_error()
    if logits.ndim == 3 or target.sequence:
        tokens = target.for_outputs(logits)
        try:
            labels, num_tokens = tokens.aligned_labels(), tokens.num_tokens("labelled")
            return token_cross_entropy(logits, labels, num_tokens=num_tokens, label_smoothing=label_smoothing)
        except (IndexError, RuntimeError) as error:
            raise _label_range_error(error, logits, tokens.labels) from error
    labels = target.labels
    try:
        total = F.cross_entropy(
            logits.float(), labels, label_smoothing=label_smoothing, ignore_index=IGNORE_INDEX, reduction="sum"
        )
    except (IndexError, RuntimeError) as error:
        raise _label_range_error(error, logits, labels) from error
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def _label_range_error(error: Exception, logits: Tensor, target: Tensor) -> Exception:
    """A clear ``ValueError`` for labels out of the network's range; any other error unchanged."""
    if "out of bounds" not in str(error):
        return error
    labels = sorted(set(target[target != IGNORE_INDEX].flatten().tolist()))
    shown = labels if len(labels) <= 12 else [*labels[:6], "...", *labels[-6:]]
    return ValueError(
        f"expected labels in [0, {logits.shape[-1]}) (the network has {logits.shape[-1]} outputs) but a batch has "
        f"labels {shown}; set num_classes to the number of classes of the data, or fix the dataset's labels (for a "
        f"language model: use the tokenizer the model was built for)."
    )


def total_loss(losses: Mapping[str, Tensor]) -> Tensor:
    """Sum of the weighted components returned by :class:`Objective`."""
    return torch.stack([value.float() for value in losses.values()]).sum()
