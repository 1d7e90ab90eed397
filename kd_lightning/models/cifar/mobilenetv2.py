"""The half-width MobileNetV2 of the KD benchmark (RepDistiller's ``mobile_half``), exported as ``MobileNetV2``.

Paper: Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
Benchmark source: the CRD / RepDistiller zoo (``HobbitLong/RepDistiller`` ``models/mobilenetv2.py``, from "Knowledge
Distillation via Route Constrained Optimization", Jin et al. 2019; also used by ``megvii-research/mdistiller``):
expansion 6, width multiplier 0.5 (but the last 1x1 convolution keeps 1280 channels), a stride-2 stem, and the
first block's expansion-1 inverted residual keeps its 1x1 expansion convolution. The layers, parameter names and
initialisation are the reference's, so its CIFAR-100 checkpoints load with ``load_state_dict``.

Named outputs for a ``[B, 3, 32, 32]`` input (the half-width network):

| name | output | activation |
|---|---|---|
| ``conv1`` | ``[B, 16, 16, 16]`` | post-ReLU (RepDistiller's ``f0``) |
| ``blocks.0`` | ``[B, 8, 16, 16]`` | none: linear bottleneck (every ``blocks.N`` ends in a BatchNorm) |
| ``blocks.1`` | ``[B, 12, 16, 16]`` | none (``f1``) |
| ``blocks.2`` | ``[B, 16, 8, 8]`` | none (``f2``) |
| ``blocks.3`` | ``[B, 32, 4, 4]`` | none |
| ``blocks.4`` | ``[B, 48, 4, 4]`` | none (``f3``) |
| ``blocks.5`` | ``[B, 80, 2, 2]`` | none |
| ``blocks.6`` | ``[B, 160, 2, 2]`` | none (``f4``) |
| ``conv2`` | ``[B, 1280, 2, 2]`` | post-ReLU (1x1 convolution) |
| ``pool`` | ``[B, 1280]`` | global average of ``conv2`` (``f5``) |
| ``classifier`` | ``[B, num_classes]`` | logits (``classifier.0`` is the linear layer) |
"""

from __future__ import annotations

from torch import Tensor, nn

from kd_lightning.models.cifar._layers import global_pool, init_normal_fan_out_

SETTINGS: tuple[tuple[bool, int, int, int], ...] = (
    (False, 16, 1, 1),
    (True, 24, 2, 1),
    (True, 32, 3, 2),
    (True, 64, 4, 2),
    (True, 96, 3, 1),
    (True, 160, 3, 2),
    (True, 320, 1, 1),
)
"""Per group of blocks ``blocks.N``: (expand by the network's ratio, else by 1; channels at width 1; blocks; stride)."""


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    padding = kernel_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion + ReLU, 3x3 depthwise + ReLU, 1x1 linear projection; plus ``x`` where the shape is unchanged.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the depthwise convolution (1 or 2).
        expand_ratio: hidden channels are ``in_channels * expand_ratio``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"expected stride 1 or 2 but got {stride}.")
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs (see the module docstring for the named outputs and their shapes).

    Args:
        num_classes: number of output classes.
        expand_ratio: expansion of the inverted residuals after the first group (the paper's ``t``).
        width_mult: channel multiplier; the last convolution has ``1280`` channels, or ``1280 * width_mult`` if wider.
    """

    def __init__(self, num_classes: int = 100, expand_ratio: int = 6, width_mult: float = 0.5) -> None:
        super().__init__()
        in_channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_channels, 3, stride=2)
        self.blocks = nn.ModuleList()
        for expand, channels, num_blocks, stride in SETTINGS:
            out_channels = int(channels * width_mult)
            group = []
            for index in range(num_blocks):
                ratio = expand_ratio if expand else 1
                group.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, ratio))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_channels, last_channels, 1)
        self.pool = global_pool()
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_normal_fan_out_(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return self.classifier(self.pool(self.conv2(x)))


def MobileNetV2(num_classes: int = 100) -> nn.Module:  # noqa: N802 (the benchmark's name)
    """The benchmark's half-width MobileNetV2 student (RepDistiller ``mobile_half``; 812,836 parameters at 100
    classes)."""
    return CifarMobileNetV2(num_classes, expand_ratio=6, width_mult=0.5)
