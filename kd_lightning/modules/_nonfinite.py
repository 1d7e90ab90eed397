"""Non-finite training losses: which component, where, and why — and a fit that never took a step fails.

The guard in ``training_step`` stops a run (``on_nonfinite: stop``) or skips the step (``skip``) before ``backward``.
Its message attributes the fault, in this order: inputs that hold NaN/inf (the data); a teacher whose outputs hold
NaN/inf (named, with its weights file: re-export it); a student whose weights are no longer finite (the run
diverged: lower the learning rate, clip gradients); a student whose forward gives NaN/inf on finite inputs and
weights (the network); otherwise finite everything (an overflow inside a term).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from kd_lightning.core.batch import Batch
from kd_lightning.files.weights import first_nonfinite


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite; raised before ``backward``, so the weights are those of the last step."""


def _nonfinite_count(value: Any) -> int:
    tensors = value.values() if isinstance(value, Mapping) else [value]
    return sum(int((~torch.isfinite(t)).sum()) for t in tensors if isinstance(t, Tensor) and t.is_floating_point())


def cause_of(module: Any, parts: Mapping[str | None, Batch]) -> str:
    """Why the loss of ``parts`` is not finite: the inputs, the teacher, the student's weights, or a term."""
    for part in parts.values():
        count = _nonfinite_count(part.inputs)
        if count:
            return f"The batch's inputs hold {count} NaN/inf value(s): fix the data (dataset or transform)."
    if module.teacher is not None and module.teacher.is_teaching:
        for part in parts.values():
            with torch.no_grad():
                outputs = module.teacher_outputs(part) or {}
            count = _nonfinite_count(outputs)
            if count:
                return (
                    f"The {module.teacher.describe()} gives {count} NaN/inf output value(s) on finite inputs: fix the "
                    f"teacher (re-export its weights, check teacher_normalization, or hold it in float32), not the "
                    f"student."
                )
    bad = first_nonfinite(module.student.state_dict())
    if bad is not None:
        return (
            f"The student's weights are no longer finite ({bad}): the run diverged; lower the learning rate or clip "
            f"gradients (trainer.gradient_clip_val)."
        )
    for part in parts.values():
        with torch.no_grad():
            count = _nonfinite_count(module.student_outputs(part))
        if count:
            return (
                f"The student {type(module.student).__name__} gives {count} NaN/inf output value(s) on finite inputs "
                f"with finite weights: its forward computes them (a log or division of zero, an overflow under mixed "
                f"precision); fix the network, not the data or the teacher."
            )
    return (
        "The inputs, the teacher's outputs and the student's weights are finite: a term overflowed; lower the "
        "learning rate, clip gradients (trainer.gradient_clip_val), or check the term's inputs (e.g. a temperature or "
        "feature scale that overflows under mixed precision)."
    )


def describe_nonfinite(module: Any, losses: Mapping[str, Tensor], parts: Mapping[str | None, Batch], index: int) -> str:
    """Which loss components are not finite, where (epoch, step, batch) and why (:func:`cause_of`)."""
    bad = [name for name, value in losses.items() if not bool(torch.isfinite(value.detach()).all())]
    components = ", ".join(f"{name}={float(losses[name].detach()):g}" for name in bad) or "the total"
    where = f"epoch {module.current_epoch}, global step {module.global_step}, batch {index}"
    return (
        f"non-finite training loss at {where}: {components}; the step was not taken. {cause_of(module, parts)} To "
        f"skip such steps instead of stopping, set the module's on_nonfinite: skip."
    )


def check_some_step_taken(module: Any, steps_taken: int) -> None:
    """Raise when a fit ended an epoch (or the fit) having skipped every training step: it trained nothing."""
    if steps_taken == 0 and module.skipped_steps > getattr(module, "_skipped_at_start", 0):
        skipped = module.skipped_steps - getattr(module, "_skipped_at_start", 0)
        raise NonFiniteLossError(
            f"every training step of this fit so far was skipped ({skipped} non-finite losses, on_nonfinite: skip): "
            f"the student trained on nothing, and its checkpoints hold untrained weights. The last skipped step's "
            f"warning says why; fix that cause (with on_nonfinite: stop the run stops at the first one)."
        )
