"""The ShuffleNet (v1) of the KD benchmark, ``ShuffleV1``: groups 3, stage widths 240, 480, 960.

Paper: Zhang, Zhou, Lin & Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices",
CVPR 2018. Benchmark source: the CRD / RepDistiller zoo (``HobbitLong/RepDistiller`` ``models/ShuffleNetv1.py``, also
used by ``megvii-research/mdistiller``), a CIFAR adaptation with a 1x1 stem, no stem max-pool, and the first stage's
first 1x1 convolution ungrouped (its input has only 24 channels). The layers, parameter names and initialisation are
the reference's, so its CIFAR-100 checkpoints load with ``load_state_dict``.

Named outputs for a ``[B, 3, 32, 32]`` input:

| name | output | activation |
|---|---|---|
| ``conv1`` / ``bn1`` | ``[B, 24, 32, 32]`` | none (1x1 stem convolution / its BatchNorm) |
| ``relu`` | ``[B, 24, 32, 32]`` | post-ReLU (RepDistiller's ``f0``) |
| ``layer1`` | ``[B, 240, 16, 16]`` | post-ReLU (``f1``) |
| ``layer2`` | ``[B, 480, 8, 8]`` | post-ReLU (``f2``) |
| ``layer3`` | ``[B, 960, 4, 4]`` | post-ReLU (``f3``) |
| ``pool`` | ``[B, 960]`` | global average of ``layer3`` (``f4``) |
| ``linear`` | ``[B, num_classes]`` | logits |

The stages keep the reference's names ``layer1..3`` (the paper's stages 2-4). A stage's output is its last unit's,
after the unit's final ReLU; RepDistiller's ``preact=True`` features (before that ReLU) are not a module output here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kd_lightning.models.cifar._layers import ChannelShuffle, global_pool


class ShuffleUnit(nn.Module):
    """Grouped 1x1, channel shuffle, 3x3 depthwise, grouped 1x1; added to ``x`` (stride 1) or concatenated with its
    3x3 average pool (stride 2); then ReLU.

    Args:
        in_channels: input channels.
        out_channels: channels of the residual branch (at stride 2 the unit outputs ``in_channels + out_channels``).
        stride: 1 or 2.
        groups: groups of the 1x1 convolutions.
        first_groups: groups of the first 1x1 convolution (1 on the 24-channel stem output).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_channels = out_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu1 = nn.ReLU()
        self.shuffle1 = ChannelShuffle(first_groups)
        self.conv2 = nn.Conv2d(
            mid_channels, mid_channels, kernel_size=3, stride=stride, padding=1, groups=mid_channels, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid_channels, out_channels, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        shortcut = self.shortcut(x)
        return self.relu3(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


def _stage(
    in_channels: int, width: int, num_blocks: int, groups: int, first_groups: int | None = None
) -> nn.Sequential:
    """A stride-2 unit whose branch adds ``width - in_channels`` channels to its pooled input, then stride-1 units.

    ``first_groups`` (default ``groups``) groups the first unit's first 1x1 convolution.
    """
    first_groups = groups if first_groups is None else first_groups
    return nn.Sequential(
        ShuffleUnit(in_channels, width - in_channels, 2, groups, first_groups),
        *(ShuffleUnit(width, width, 1, groups, groups) for _ in range(num_blocks - 1)),
    )


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 for CIFAR (see the module docstring for the named outputs and their shapes).

    Args:
        widths: output channels of the three stages.
        num_blocks: units per stage (the first of each has stride 2).
        groups: groups of the 1x1 convolutions (3 in the benchmark).
        num_classes: number of output classes.
    """

    def __init__(
        self,
        widths: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        if len(widths) != 3 or len(num_blocks) != 3:
            raise ValueError(f"expected 3 stage widths and 3 block counts but got {widths!r} and {num_blocks!r}.")
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self.layer1 = _stage(24, widths[0], num_blocks[0], groups, first_groups=1)
        self.layer2 = _stage(widths[0], widths[1], num_blocks[1], groups)
        self.layer3 = _stage(widths[1], widths[2], num_blocks[2], groups)
        self.pool = global_pool()
        self.linear = nn.Linear(widths[2], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.pool(x))


def ShuffleV1(num_classes: int = 100) -> nn.Module:  # noqa: N802 (the benchmark's name)
    """The benchmark's ShuffleNet v1 student, groups 3 (949,258 parameters at 100 classes)."""
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), groups=3, num_classes=num_classes)
