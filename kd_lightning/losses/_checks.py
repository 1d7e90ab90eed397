"""Input checks shared by the losses (each raises a ``ValueError`` that names the problem and the fix), and the
spatial alignment of two feature maps."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor


def check_positive(name: str, value: float) -> None:
    """Raise unless ``0 < value < inf`` (temperatures, kernel widths, ...): an infinite temperature would turn a
    ``-inf`` logit into ``-inf / inf = NaN`` and scale the loss by ``inf``."""
    if not value > 0:
        raise ValueError(f"expected {name} > 0 but got {name}={value}; pass a positive {name}.")
    if math.isinf(value):
        raise ValueError(f"expected a finite {name} > 0 but got {name}={value}; pass a positive finite {name}.")


def check_non_negative(name: str, value: float) -> None:
    """Raise unless ``0 <= value < inf`` (loss weights, mixing coefficients, ...): an infinite weight makes a zero
    loss ``inf * 0 = NaN``."""
    if not value >= 0:
        raise ValueError(f"expected {name} >= 0 but got {name}={value}; pass a non-negative {name}.")
    if math.isinf(value):
        raise ValueError(f"expected a finite {name} >= 0 but got {name}={value}; pass a non-negative finite {name}.")


def check_same_batch(student: Tensor, teacher: Tensor) -> None:
    """Raise unless student and teacher tensors hold the same number of samples (dim 0)."""
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"expected student and teacher outputs for the same batch but got batch sizes "
            f"{student.shape[0]} (student) and {teacher.shape[0]} (teacher); feed both networks the same inputs."
        )


def check_same_shape(student: Tensor, teacher: Tensor, loss: str, fix: str) -> None:
    """Raise unless student and teacher tensors have identical shapes; ``fix`` says which adapter to add."""
    check_same_batch(student, teacher)
    if student.shape != teacher.shape:
        raise ValueError(
            f"{loss} expected student and teacher tensors of the same shape but got "
            f"{tuple(student.shape)} (student) and {tuple(teacher.shape)} (teacher); {fix}"
        )


def check_ndim(tensor: Tensor, ndims: Sequence[int], loss: str, role: str) -> None:
    """Raise unless ``tensor.ndim`` is one of ``ndims`` (``role`` is "student" or "teacher")."""
    if tensor.ndim not in ndims:
        expected = " or ".join(f"{n}-d" for n in ndims)
        raise ValueError(f"{loss} expected a {expected} {role} tensor but got shape {tuple(tensor.shape)}.")


def full_precision(x: Tensor) -> AbstractContextManager:
    """Disable autocast for a loss's maths on ``x``'s device: bf16 Gram matrices, kernel means and log ratios lose too
    much precision (and the loss must stay a float32 scalar)."""
    if x.device.type in ("cpu", "cuda"):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


def pool_to_smaller(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool two ``[B, C, H, W]`` maps to the smaller height and width of the pair (RepDistiller's rule)."""
    size = (min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3]))
    if tuple(first.shape[2:]) != size:
        first = F.adaptive_avg_pool2d(first, size)
    if tuple(second.shape[2:]) != size:
        second = F.adaptive_avg_pool2d(second, size)
    return first, second


def token_normaliser(num_tokens: Tensor | float | None, count: int | Tensor, like: Tensor, loss: str) -> Tensor | float:
    """The divisor of a per-token loss: ``num_tokens`` (a number or a 0-d tensor, as float32 on ``like``'s device), or
    ``count``, the number of selected positions, when it is ``None``; a zero becomes 1, so an empty selection gives 0
    with a zero gradient instead of ``0 / 0``."""
    if num_tokens is None:
        return count.clamp_min(1) if isinstance(count, Tensor) else float(max(count, 1))
    if isinstance(num_tokens, Tensor):
        if num_tokens.numel() != 1:
            raise ValueError(
                f"{loss} expected num_tokens as a number or a 0-d tensor but got a tensor of shape "
                f"{tuple(num_tokens.shape)}; pass the total number of tokens the loss is averaged over."
            )
        n = num_tokens.detach().to(device=like.device, dtype=torch.float32).reshape(())
        return torch.where(n > 0, n, torch.ones_like(n))
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, numbers.Real) or not 0 <= num_tokens < math.inf:
        raise ValueError(
            f"{loss} expected num_tokens >= 0 and finite (a number or a 0-d tensor) but got num_tokens={num_tokens!r}; "
            f"pass the total number of tokens the loss is averaged over, or None for the selected positions."
        )
    return float(num_tokens) if num_tokens > 0 else 1.0
