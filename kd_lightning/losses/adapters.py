"""Adapters that a loss owns: small trainable networks mapping student features onto the teacher's shape.

An adapter cannot be built when the loss is constructed (from YAML, the feature shapes are unknown), so
:class:`LazyAdapter` builds its network on the first call from the shapes of the student and teacher tensors.
The shapes are kept in a buffer, so a checkpoint restores the adapter with strict ``load_state_dict`` before
any forward pass. The distillation modules run one batch through the objective in ``setup()``, so every
adapter exists (and is in the optimizer, and in DDP's reducer) before training starts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

AdapterFactory = Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]


def _encode_shapes(student: tuple[int, ...], teacher: tuple[int, ...]) -> Tensor:
    return torch.tensor([len(student), *student, len(teacher), *teacher], dtype=torch.long)


def _decode_shapes(code: Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    values = [int(v) for v in code.tolist()]
    n_student = values[0]
    student = tuple(values[1 : 1 + n_student])
    teacher = tuple(values[2 + n_student :])
    return student, teacher


class LazyAdapter(nn.Module):
    """A network built on first use by ``factory(student_shape, teacher_shape)`` (per-sample shapes, no batch dim).

    Args:
        factory: builds the adapter from the per-sample shapes, e.g. ``(C_s, H, W), (C_t, H, W)``.

    Example:
        >>> adapter = LazyAdapter(lambda s, t: nn.Conv2d(s[0], t[0], kernel_size=1))
        >>> adapter(torch.randn(2, 8, 4, 4), torch.randn(2, 16, 4, 4)).shape
        torch.Size([2, 16, 4, 4])
    """

    def __init__(self, factory: AdapterFactory) -> None:
        super().__init__()
        self.factory = factory
        self.net: nn.Module | None = None
        self.register_buffer("shapes", torch.zeros(0, dtype=torch.long))
        self._built_for: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # the shapes, on the host

    @property
    def is_built(self) -> bool:
        return self.net is not None

    def build(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], device: torch.device | None = None):
        """Create the network for these per-sample shapes (no-op when already built for the same shapes).

        Once built, the check compares Python tuples: no read of a device tensor at every call.
        """
        shapes = (tuple(student_shape), tuple(teacher_shape))
        if self.net is not None:
            if self._built_for is None:  # built by an earlier release's code path: read the buffer once
                self._built_for = _decode_shapes(self.shapes.cpu())
            if self._built_for != shapes:
                built_s, built_t = self._built_for
                raise ValueError(
                    f"adapter was built for student {built_s} -> teacher {built_t} but got student "
                    f"{tuple(student_shape)} -> teacher {tuple(teacher_shape)}; use one loss instance per layer pair."
                )
            return
        device = device if device is not None else self.shapes.device
        self.net = self.factory(*shapes).to(device)
        self.net.train(self.training)
        self.shapes = _encode_shapes(*shapes).to(device)
        self._built_for = shapes

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Map ``student`` (``[B, *S]``) to the teacher's shape ``[B, *T]`` (``teacher`` only supplies the shape)."""
        self.build(tuple(student.shape[1:]), tuple(teacher.shape[1:]), device=student.device)
        return self.net(student)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        code = state_dict.get(prefix + "shapes")
        if code is not None and code.numel() > 0 and self.net is None:
            self.build(*_decode_shapes(code.cpu()), device=self.shapes.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)


def conv_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """FitNets-style regressor: 1x1 conv + BN (+ resize) from ``[C_s, H_s, W_s]`` to ``[C_t, H_t, W_t]``.

    For vectors (``[D_s]`` -> ``[D_t]``) it is a linear layer. Spatially larger student maps are average-pooled,
    smaller ones are upsampled (as in RepDistiller's ``ConvReg``, which uses strided / transposed convs).
    """
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    if len(student_shape) != 3 or len(teacher_shape) != 3:
        raise ValueError(
            f"conv_regressor expected [C, H, W] or [D] features on both sides but got student {student_shape} "
            f"and teacher {teacher_shape}."
        )
    layers: list[nn.Module] = [nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1, bias=False)]
    layers.append(nn.BatchNorm2d(teacher_shape[0]))
    if tuple(student_shape[1:]) != tuple(teacher_shape[1:]):
        layers.append(
            nn.Upsample(size=tuple(teacher_shape[1:]), mode="bilinear", align_corners=False)
            if student_shape[1] < teacher_shape[1]
            else nn.AdaptiveAvgPool2d(tuple(teacher_shape[1:]))
        )
    return nn.Sequential(*layers)
