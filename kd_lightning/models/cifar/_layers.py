"""Layers and weight initialisations shared by the CIFAR zoo's families."""

from __future__ import annotations

import math

from torch import Tensor, nn


def global_pool() -> nn.Sequential:
    """Global average pooling to ``[B, C]``: the zoo's ``pool`` module, right before each classifier.

    The reference code pools with a fixed window equal to the last feature map at 32x32 input (``AvgPool2d(8)``,
    ``avg_pool2d(4)``...); an adaptive pool is the same mean there and also works at other input sizes.
    """
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: ``[B, g*c, H, W] -> [B, g, c, H, W] -> [B, c, g, H, W] -> [B, g*c, H, W]``.

    Args:
        groups: number of channel groups ``g`` (``1`` is the identity).
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        x = x.reshape(batch, self.groups, channels // self.groups, height, width).transpose(1, 2)
        return x.reshape(batch, channels, height, width)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def init_kaiming_fan_out_(model: nn.Module) -> None:
    """He-normal convolutions (``fan_out``), BatchNorm at weight 1 and bias 0; linears keep PyTorch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def init_normal_fan_out_(model: nn.Module, linear_std: float | None = None) -> None:
    """Convolutions ``N(0, 2 / (k * k * out_channels))`` with zero bias, BatchNorm at weight 1 and bias 0.

    Linear biases are zeroed; linear weights are drawn from ``N(0, linear_std**2)`` if ``linear_std`` is given and
    otherwise keep PyTorch's default (WRN keeps the default; VGG and MobileNetV2 use ``linear_std=0.01``).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
