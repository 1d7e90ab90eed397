"""Adapters between CNN feature maps ``[B, C, H, W]`` and ViT token sequences ``[B, N, D]``.

A ViT's block (or its final ``norm``) returns ``[B, P + h*w, D]``: ``P`` prefix tokens (the class token, DeiT's
distillation token, register tokens) followed by one token per patch of an ``h x w`` grid, row by row. A CNN's stage
returns ``[B, C, H, W]``. Two :class:`~kd_lightning.losses.adapters.LazyAdapter` factories bridge them; like every
adapter of the library they are built from the first batch's shapes of both sides, trained with the student and
restored strictly from a checkpoint (the factories re-derive the grid from the saved shapes):

* :func:`tokens_to_map` (a ViT student, a CNN teacher): the prefix tokens are dropped, the patch tokens reshaped to
  ``[B, D, h, w]``, resampled to the teacher's ``H x W`` and projected to ``C`` channels (1x1 conv + BN, as
  FitNets' regressor :func:`~kd_lightning.losses.adapters.conv_regressor`).
* :func:`map_to_tokens` (a CNN student, a ViT teacher): the map is resampled to the teacher's token grid, flattened to
  ``[B, h*w, C]`` and projected to ``D`` by a ``Linear`` (or a 2-layer MLP). The teacher's prefix tokens are not
  matched: the adapter's :meth:`MapToTokens.patch_tokens` gives the teacher's patch tokens, the part the loss compares.
  A class token is matched by a pooled student feature in :class:`~kd_lightning.losses.foundation.RADIOLoss`.

Resampling (:class:`Resample`): a grid smaller in both directions is reached by adaptive average pooling (the rule of
the feature losses, RepDistiller's ``pool_to_smaller``), any other by bilinear interpolation (``align_corners=False``).

Grid detection (:func:`token_grid`): the number of prefix tokens ``P`` and the grid ``h x w`` are found from the
token count ``N`` and the aspect ratio of the other side's map (both networks see the same image): ``N - P = h * w``
with ``h / w = H / W``, trying ``P`` = 0, 1 (a class token) and 2 (DeiT's class and distillation tokens). Pass
``prefix_tokens`` for other cases (register tokens).

From YAML, these adapters are chosen by a loss's ``adapter`` argument::

    loss: {class_path: kd_lightning.losses.FitNetsLoss, init_args: {adapter: tokens_to_map}}
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MapToTokens",
    "Resample",
    "TokensToMap",
    "map_as_tokens",
    "map_to_tokens",
    "mlp_projector",
    "token_grid",
    "token_map_hint",
    "tokens_as_map",
    "tokens_to_map",
]

DETECTED_PREFIXES = (0, 1, 2)
"""Prefix-token counts tried when ``prefix_tokens`` is not given: none, a class token, DeiT's class + distillation."""
FITNETS_LINE = "loss: {{class_path: kd_lightning.losses.FitNetsLoss, init_args: {{adapter: {adapter}}}}}"


def token_grid(
    num_tokens: int, aspect: tuple[int, int] = (1, 1), prefix_tokens: int | None = None
) -> tuple[int, int, int]:
    """``(P, h, w)``: the prefix tokens and the patch grid of a ``[B, num_tokens, D]`` sequence.

    Args:
        num_tokens: ``N = P + h * w``.
        aspect: ``(H, W)`` of a map of the same image (the other network's); ``h / w`` must equal ``H / W``.
        prefix_tokens: ``P`` when known; ``None`` tries 0, 1 and 2 and requires exactly one to fit.

    Example:
        >>> token_grid(197)  # a ViT-B/16 at 224 px: the class token and 14 x 14 patches
        (1, 14, 14)
        >>> token_grid(130, aspect=(16, 8))  # DeiT distilled: class + distillation tokens, 16 x 8 patches
        (2, 16, 8)
    """
    candidates = DETECTED_PREFIXES if prefix_tokens is None else (prefix_tokens,)
    height, width = aspect
    fits = []
    for prefix in candidates:
        patches = num_tokens - prefix
        if patches <= 0:
            continue
        h = round(math.sqrt(patches * height / width))
        if h > 0 and patches % h == 0 and h * width == (patches // h) * height:
            fits.append((prefix, h, patches // h))
    if len(fits) == 1:
        return fits[0]
    tried = ", ".join(str(p) for p in candidates)
    raise ValueError(
        f"expected {num_tokens} tokens to be P prefix tokens (P = {tried}) followed by an h x w patch grid with "
        f"h / w = {height} / {width} but {'several' if fits else 'none'} fit; pass prefix_tokens (the class, "
        f"distillation and register tokens of the ViT) to the loss."
    )


def tokens_as_map(tokens: Tensor, prefix_tokens: int, grid: tuple[int, int]) -> Tensor:
    """``[B, P + h*w, D]`` -> ``[B, D, h, w]``: the patch tokens (row-major, as timm's ``flatten(2)``) as a map."""
    patches = tokens[:, prefix_tokens:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def map_as_tokens(feature: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]``, row-major (the order of a ViT's patch tokens)."""
    return feature.flatten(2).transpose(1, 2)


class Resample(nn.Module):
    """Resample ``[B, C, H, W]`` to ``size``: adaptive average pooling when smaller in both directions, else bilinear.

    Example:
        >>> import torch
        >>> Resample((4, 4))(torch.randn(2, 3, 14, 14)).shape
        torch.Size([2, 3, 4, 4])
    """

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if (height, width) == self.size:
            return x
        if height >= self.size[0] and width >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def mlp_projector(in_dim: int, out_dim: int, hidden_dim: int | None) -> nn.Module:
    """``Linear`` when ``hidden_dim`` is ``None``, else ``Linear -> LayerNorm -> GELU -> Linear`` (RADIO's adaptor)."""
    if hidden_dim is None:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
    )


class TokensToMap(nn.Module):
    """``[B, P + h*w, D]`` tokens -> ``[B, C, H, W]``: drop the prefix, reshape, :class:`Resample`, 1x1 conv + BN.

    Args:
        prefix_tokens: ``P``, the tokens before the patches (class, distillation, registers).
        grid: the token grid ``(h, w)``.
        size: the target map's ``(H, W)``.
        dim: the token width ``D``.
        channels: the target map's channels ``C``.
    """

    def __init__(self, prefix_tokens: int, grid: tuple[int, int], size: tuple[int, int], dim: int, channels: int):
        super().__init__()
        self.prefix_tokens, self.grid = prefix_tokens, tuple(grid)
        self.resample = Resample(size)
        self.proj = nn.Conv2d(dim, channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.norm(self.proj(self.resample(tokens_as_map(tokens, self.prefix_tokens, self.grid))))

    def extra_repr(self) -> str:
        return f"prefix_tokens={self.prefix_tokens}, grid={self.grid}"


class MapToTokens(nn.Module):
    """``[B, C, H, W]`` map -> ``[B, h*w, D]`` patch tokens: :class:`Resample` to the grid, flatten, project.

    Args:
        channels: the map's channels ``C``.
        dim: the target tokens' width ``D``.
        grid: the target's token grid ``(h, w)``.
        prefix_tokens: the target's prefix tokens, dropped by :meth:`patch_tokens`.
        hidden_dim: ``None`` for a ``Linear(C, D)`` projection, else a 2-layer MLP of this width.
    """

    def __init__(
        self, channels: int, dim: int, grid: tuple[int, int], prefix_tokens: int = 0, hidden_dim: int | None = None
    ) -> None:
        super().__init__()
        self.prefix_tokens, self.grid = prefix_tokens, tuple(grid)
        self.resample = Resample(self.grid)
        self.proj = mlp_projector(channels, dim, hidden_dim)

    def forward(self, feature: Tensor) -> Tensor:
        return self.proj(map_as_tokens(self.resample(feature)))

    def patch_tokens(self, tokens: Tensor) -> Tensor:
        """The target's patch tokens ``[B, h*w, D]`` (its prefix tokens dropped), what the adapter output meets."""
        return tokens[:, self.prefix_tokens :]

    def extra_repr(self) -> str:
        return f"prefix_tokens={self.prefix_tokens}, grid={self.grid}"


def _check_shapes(factory: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], dims: tuple[int, int]):
    if (len(student_shape), len(teacher_shape)) != dims:
        kinds = {2: "[N, D] tokens", 3: "[C, H, W] maps"}
        raise ValueError(
            f"{factory} expected student {kinds[dims[0]]} and teacher {kinds[dims[1]]} (per sample) but got student "
            f"{tuple(student_shape)} and teacher {tuple(teacher_shape)}; "
            f"{'use adapter: map_to_tokens' if dims[0] == 2 else 'use adapter: tokens_to_map'} for the other "
            f"direction, or adapter: true between two maps."
        )


def tokens_to_map(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], prefix_tokens: int | None = None
) -> TokensToMap:
    """LazyAdapter factory: student tokens ``(P + h*w, D)`` -> teacher map ``(C, H, W)`` (a :class:`TokensToMap`).

    Example:
        >>> import torch
        >>> from kd_lightning.losses.adapters import LazyAdapter
        >>> adapter = LazyAdapter(tokens_to_map)
        >>> adapter(torch.randn(2, 1 + 4 * 4, 192), torch.randn(2, 64, 8, 8)).shape  # ViT-Ti tokens -> a CIFAR map
        torch.Size([2, 64, 8, 8])
    """
    _check_shapes("tokens_to_map", student_shape, teacher_shape, (2, 3))
    (num_tokens, dim), (channels, height, width) = student_shape, teacher_shape
    prefix, h, w = token_grid(num_tokens, (height, width), prefix_tokens)
    return TokensToMap(prefix, (h, w), (height, width), dim, channels)


def map_to_tokens(
    student_shape: tuple[int, ...],
    teacher_shape: tuple[int, ...],
    prefix_tokens: int | None = None,
    hidden_dim: int | None = None,
) -> MapToTokens:
    """LazyAdapter factory: student map ``(C, H, W)`` -> the teacher's patch tokens ``(h*w, D)`` (a
    :class:`MapToTokens`; the teacher has ``P + h*w`` tokens, ``prefix_tokens`` = ``P`` or detected).

    Example:
        >>> import torch
        >>> from kd_lightning.losses.adapters import LazyAdapter
        >>> adapter = LazyAdapter(map_to_tokens)
        >>> teacher = torch.randn(2, 2 + 4 * 4, 192)  # DeiT-Ti distilled: class + distillation tokens
        >>> adapter(torch.randn(2, 64, 8, 8), teacher).shape
        torch.Size([2, 16, 192])
        >>> adapter.net.patch_tokens(teacher).shape
        torch.Size([2, 16, 192])
    """
    _check_shapes("map_to_tokens", student_shape, teacher_shape, (3, 2))
    (channels, height, width), (num_tokens, dim) = student_shape, teacher_shape
    prefix, h, w = token_grid(num_tokens, (height, width), prefix_tokens)
    return MapToTokens(channels, dim, (h, w), prefix, hidden_dim)


def token_map_hint(student: Tensor, teacher: Tensor, loss: str) -> str | None:
    """The error for a token sequence ``[B, N, D]`` paired with a feature map ``[B, C, H, W]`` (``None`` otherwise):
    which adapter converts one into the other, and the YAML line that asks for it."""
    kinds = (student.ndim, teacher.ndim)
    if kinds not in ((3, 4), (4, 3)):
        return None
    adapter = "tokens_to_map" if kinds == (3, 4) else "map_to_tokens"
    if kinds == (3, 4):
        what = "student tokens [B, N, D] and teacher map [B, C, H, W]"
    else:
        what = "student map [B, C, H, W] and teacher tokens [B, N, D]"
    return (
        f"{loss} got {what}: {tuple(student.shape)} and {tuple(teacher.shape)}; convert them with the "
        f"{adapter} adapter: {FITNETS_LINE.format(adapter=adapter)} (or RADIOLoss, which pairs a summary and patch "
        f"features of either kind)."
    )
