"""Checks of a module's arguments and of the fit's budget, each with a message that names the problem and the fix.

Constructor arguments (networks, terms, factories, numbers), the learning-rate schedule (stepped on a throw-away
optimizer) and the Trainer budget (a run that can make no optimizer step is refused). The first training batch is
checked by :mod:`~kd_lightning.modules._first_batch`, parts that must agree by :mod:`~kd_lightning.modules._agreement`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kd_lightning.core.networks import require_network as check_network
from kd_lightning.core.objective import DistillTerm
from kd_lightning.models.deit import DISTILLATION_HEAD, DistilledViT


def check_terms(terms: Any, argument: str = "terms") -> list[DistillTerm] | None:
    """Return ``terms`` as a list of :class:`DistillTerm` (``None`` stays ``None``), or raise naming the bad item."""
    if terms is None:
        return None
    if isinstance(terms, DistillTerm):
        raise TypeError(
            f"expected {argument} to be a list of DistillTerm but got a single DistillTerm; wrap it in a list: "
            f"{argument}=[DistillTerm(...)] (in YAML, a list item `- class_path: kd_lightning.DistillTerm`)."
        )
    if isinstance(terms, (str, bytes, Mapping)) or not isinstance(terms, Sequence):
        raise TypeError(f"expected {argument} to be a list of DistillTerm but got a {type(terms).__name__}.")
    for index, term in enumerate(terms):
        if not isinstance(term, DistillTerm):
            hint = (
                f"wrap the loss: DistillTerm({type(term).__name__}(...), weight=...)"
                if isinstance(term, nn.Module)
                else "each item is DistillTerm(loss=..., weight=..., student=..., teacher=...)"
            )
            raise TypeError(f"expected {argument}[{index}] to be a DistillTerm but got {type(term).__name__}; {hint}.")
    return list(terms)


def check_factory(value: Any, argument: str, example: str, optional: bool = False) -> None:
    """Raise unless ``value`` is a callable factory (an optimizer or scheduler class or partial), or ``None``."""
    if value is None and optional:
        return
    if isinstance(value, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
        raise TypeError(
            f"expected {argument} to be a factory called with the parameters (or the optimizer) but got an already "
            f"built {type(value).__name__}; pass the class or a functools.partial, e.g. {example}."
        )
    if not callable(value):
        raise TypeError(f"expected {argument} to be callable, e.g. {example}, but got {type(value).__name__}.")


def check_number(value: Any, argument: str, minimum: float = 0.0, integer: bool = False) -> None:
    """Raise unless ``value`` is a finite number (an ``int`` when ``integer``) of at least ``minimum``."""
    kind = "an integer" if integer else "a number"
    valid = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not valid or not math.isfinite(value) or value < minimum:
        raise ValueError(f"expected {argument} >= {minimum:g} ({kind}) but got {argument}={value!r}.")


def check_something_to_learn(ce_weight: float, term_weights: Sequence[float], module: str) -> None:
    """Raise when every loss weight is zero: the objective is the constant 0 and training would change nothing."""
    if ce_weight == 0 and not any(weight > 0 for weight in term_weights):
        kind = "every term has weight 0" if term_weights else "there are no distillation terms"
        raise ValueError(
            f"{module} has nothing to learn from: ce_weight=0 and {kind}, so the loss is always 0; give ce_weight > 0 "
            f"(the labels) or at least one DistillTerm with weight > 0."
        )


def check_label_smoothing(value: float) -> None:
    """Raise unless the label smoothing is in ``[0, 1)``."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"expected label_smoothing in [0, 1) but got label_smoothing={value}.")


NONFINITE_ACTIONS = ("stop", "skip")


def check_nonfinite_action(value: str) -> None:
    """Raise unless ``on_nonfinite`` is one of :data:`NONFINITE_ACTIONS`."""
    if value not in NONFINITE_ACTIONS:
        raise ValueError(
            f"expected on_nonfinite to be one of {list(NONFINITE_ACTIONS)} but got {value!r}: "
            f"'stop' ends the run at a NaN/inf loss, 'skip' skips that step (counted as train/skipped_steps)."
        )


# ----------------------------------------------------------------- schedule and budget
def check_scheduler(
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    scheduler_factory: Callable[..., Any] | None,
    steps: int,
) -> None:
    """Build the optimizer and scheduler on one throw-away parameter and step them ``steps`` times.

    Catches schedules that fail only once training has begun (``CosineAnnealingLR(T_max=0)`` divides by zero at its
    first step) or that produce a non-finite learning rate.
    """
    if scheduler_factory is None:
        return
    probe = nn.Parameter(torch.zeros(1))
    optimizer = optimizer_factory([probe])
    name = getattr(scheduler_factory, "__name__", None) or type(scheduler_factory).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler = scheduler_factory(optimizer)
            name = type(scheduler).__name__
            for _ in range(max(steps, 1)):
                optimizer.step()
                scheduler.step()
                rates = [group["lr"] for group in optimizer.param_groups]
                if not all(math.isfinite(float(lr)) for lr in rates):
                    raise ValueError(f"the learning rate became {rates}")
    except Exception as error:
        raise ValueError(
            f"lr_scheduler {name} fails when it is stepped ({type(error).__name__}: {error}); fix its init_args "
            f"(e.g. CosineAnnealingLR needs T_max >= 1, usually T_max = max_epochs)."
        ) from error


def check_budget(trainer: Any) -> None:
    """Refuse a fit that can make no optimizer step (``max_epochs=0``, ``max_steps=0``, ``limit_train_batches=0``)."""
    reasons = []
    if trainer.max_epochs == 0:
        reasons.append("trainer.max_epochs=0")
    if trainer.max_steps == 0:
        reasons.append("trainer.max_steps=0")
    if trainer.limit_train_batches == 0:
        reasons.append(f"trainer.limit_train_batches={trainer.limit_train_batches}")
    if reasons:
        raise ValueError(
            f"this fit can make no optimizer step ({', '.join(reasons)}): nothing would be trained, and checkpoints "
            f"or exports would hold untrained weights; set it to at least 1 (or use `validate`/`test` to evaluate)."
        )


__all__ = ["NONFINITE_ACTIONS", "check_network"]


def check_distillation_token(student: nn.Module, objective: Any) -> None:
    """Raise when DeiT's two heads would not both train: a timm distilled ViT given as it is (it trains on the average
    of its heads), or a :class:`~kd_lightning.models.deit.DistilledViT` whose distillation head no term reads, or whose
    class head gets no hard-label loss (``ce_weight: 0``); each untrained head would still be half of the prediction."""
    if type(student).__name__ == "VisionTransformerDistilled":
        raise ValueError(
            "the student is a timm distilled ViT given as it is: in training it returns the average of its class and "
            "distillation heads, so both would learn the labels and the teacher alike; wrap it, "
            "kd_lightning.models.DistilledViT(model) (or build it with kd_lightning.models.deit_student), and add a "
            f"DistillTerm reading student: {DISTILLATION_HEAD}."
        )
    if not isinstance(student, DistilledViT):
        return
    terms = list(getattr(objective, "terms", []))
    if not any(DISTILLATION_HEAD in term.student_names for term in terms):
        raise ValueError(
            f"the student is a DistilledViT but no distillation term reads its distillation head "
            f"({DISTILLATION_HEAD}): that head would never train, yet the prediction at inference averages it with the "
            f"class head; add a DistillTerm with student: {DISTILLATION_HEAD}, teacher: logits "
            f"(kd_lightning.losses.HardDistillationLoss, DeiT's best, or KDLoss), or use a ViT without a distillation "
            f"token."
        )
    if getattr(objective, "ce_weight", 1.0) == 0:
        raise ValueError(
            "the student is a DistilledViT trained with ce_weight: 0, so its class head never learns the labels, yet "
            "the prediction at inference averages it with the distillation head; set ce_weight > 0 (DeiT: 0.5 beside "
            "the distillation term's 0.5)."
        )
