"""Teacher input re-normalisation: a batch standardised for the student, re-standardised for the teacher.

A teacher trained with other input statistics than the student (a timm ImageNet teacher beside a CIFAR student)
must see its own normalisation: ``x_t = (x_s * std_s + mean_s - mean_t) / std_t`` per channel, as in timm's
``DistillationTeacher.normalize_input``. :class:`Renormalize` applies it as one scale and shift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def _channels(values: Any, name: str) -> tuple[float, ...]:
    """``values`` (a number, a sequence or a tensor) as a tuple of finite floats."""
    try:
        flat = tuple(float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten().tolist())
    except (TypeError, ValueError, RuntimeError):
        flat = ()
    if not flat or not all(math.isfinite(v) for v in flat):
        raise ValueError(f"expected {name} to be finite numbers, one per channel, but got {values!r}.")
    return flat


def normalization_stats(value: Any, name: str) -> Stats:
    """Read ``{"mean": [...], "std": [...]}`` (or an object with ``mean``/``std`` attributes, e.g. a datamodule).

    Returns ``(mean, std)`` as tuples of floats of one length (one value per channel, or one for all), ``std > 0``.
    """
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"mean", "std"})
        if unknown or "mean" not in value or "std" not in value:
            raise ValueError(
                f"expected {name} to be {{mean: [...], std: [...]}} (one value per input channel) but got keys "
                f"{sorted(value)}."
            )
        mean, std = value["mean"], value["std"]
    else:
        mean, std = getattr(value, "mean", None), getattr(value, "std", None)
    mean, std = _channels(mean, f"{name}.mean"), _channels(std, f"{name}.std")
    if len(mean) != len(std):
        raise ValueError(f"expected {name}.mean and .std of one length but got {len(mean)} and {len(std)} values.")
    if min(std) <= 0:
        raise ValueError(f"expected {name}.std > 0 but got {std}.")
    return mean, std


class Renormalize(nn.Module):
    """Map inputs standardised with ``(student_mean, student_std)`` to ``(teacher_mean, teacher_std)``.

    ``forward(x) = (x * std_s + mean_s - mean_t) / std_t = x * (std_s / std_t) + (mean_s - mean_t) / std_t``, per
    channel (dimension 1) of ``x`` ``[B, C, ...]``; one value stands for every channel. The scale and shift are
    non-persistent buffers: they follow the module's device and dtype but are not in its ``state_dict``.

    Args:
        student_mean: per-channel mean the inputs were standardised with (pixels in the same range as the teacher's).
        student_std: their per-channel standard deviation.
        teacher_mean: the per-channel mean the teacher was trained with.
        teacher_std: its per-channel standard deviation.

    Example:
        >>> to_teacher = Renormalize([0.5, 0.5, 0.5], [0.25] * 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        >>> x = torch.zeros(1, 3, 2, 2)  # the student's mean pixel
        >>> to_teacher(x)[0, :, 0, 0]
        tensor([0.0655, 0.1964, 0.4178])
    """

    def __init__(
        self,
        student_mean: Sequence[float],
        student_std: Sequence[float],
        teacher_mean: Sequence[float],
        teacher_std: Sequence[float],
    ) -> None:
        super().__init__()
        (mean_s, std_s) = normalization_stats({"mean": student_mean, "std": student_std}, "student normalization")
        (mean_t, std_t) = normalization_stats({"mean": teacher_mean, "std": teacher_std}, "teacher normalization")
        if len(mean_s) != len(mean_t) and 1 not in (len(mean_s), len(mean_t)):
            raise ValueError(
                f"expected student and teacher normalization for the same channels but got {len(mean_s)} and "
                f"{len(mean_t)} values."
            )
        mean_s, std_s, mean_t, std_t = (torch.tensor(v, dtype=torch.float64) for v in (mean_s, std_s, mean_t, std_t))
        self.identity = bool(torch.equal(mean_s, mean_t) and torch.equal(std_s, std_t))
        self.register_buffer("scale", (std_s / std_t).float(), persistent=False)
        self.register_buffer("shift", ((mean_s - mean_t) / std_t).float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        channels = self.scale.numel()
        if x.dim() < 2 or channels not in (1, x.shape[1]):
            raise ValueError(
                f"expected inputs [B, {channels}, ...] (one channel per normalization value) but got "
                f"{list(x.shape)}; give the teacher/student normalization one mean/std per input channel."
            )
        shape = (1, channels) + (1,) * (x.dim() - 2)
        return (x * self.scale.view(shape) + self.shift.view(shape)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"scale={[round(v, 4) for v in self.scale.tolist()]}, shift={[round(v, 4) for v in self.shift.tolist()]}"


SCALE_RATIO = 16.0
"""Student and teacher standard deviations further apart than this are on different pixel scales (0-255 vs 0-1)."""


def check_same_scale(student: Stats, teacher: Stats) -> None:
    """Raise when the student's and the teacher's statistics are on different pixel scales.

    A teacher trained on ``[0, 1]`` pixels (std ~0.25) beside batches standardised with 0-255 statistics (std ~60),
    or the reverse, would see an almost constant image after re-standardisation. Statistics of one scale differ by a
    small factor between datasets; a ratio of standard deviations above :data:`SCALE_RATIO` (~255 for the mix-up)
    means the two were written on different scales.
    """
    (mean_s, std_s), (mean_t, std_t) = student, teacher
    ratio = max(std_s) / max(std_t)
    if ratio > SCALE_RATIO or ratio < 1 / SCALE_RATIO:
        larger, smaller = ("student", "teacher") if ratio > 1 else ("teacher", "student")
        raise ValueError(
            f"the student's and the teacher's normalization are on different pixel scales: student mean {list(mean_s)} "
            f"std {list(std_s)}, teacher mean {list(mean_t)} std {list(std_t)} (the {larger}'s are about 255x the "
            f"{smaller}'s: 0-255 pixel values beside 0-1 ones), so the teacher would see an almost constant image; "
            f"write both for pixels in [0, 1] (divide 0-255 statistics by 255), e.g. teacher_normalization: "
            f"{{mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}."
        )
