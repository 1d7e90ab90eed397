"""The ShuffleNetV2 (1x) of the KD benchmark, ``ShuffleV2``: stage widths 116, 232, 464, last convolution 1024.

Paper: Ma, Zhang, Zheng & Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", ECCV 2018.
Benchmark source: the CRD / RepDistiller zoo (``HobbitLong/RepDistiller`` ``models/ShuffleNetv2.py``, also used by
``megvii-research/mdistiller``), a CIFAR adaptation with a 1x1 stem and no stem max-pool. Each stage is a
down-sampling unit followed by 3, 7 and 3 basic units (the paper's 4, 8 and 4 units per stage). The layers, parameter
names and initialisation are the reference's, so its CIFAR-100 checkpoints load with ``load_state_dict``.

Named outputs for a ``[B, 3, 32, 32]`` input:

| name | output | activation |
|---|---|---|
| ``conv1`` / ``bn1`` | ``[B, 24, 32, 32]`` | none (1x1 stem convolution / its BatchNorm) |
| ``relu1`` | ``[B, 24, 32, 32]`` | post-ReLU (RepDistiller's ``f0``) |
| ``layer1`` | ``[B, 116, 16, 16]`` | post-ReLU, channel-shuffled (``f1``) |
| ``layer2`` | ``[B, 232, 8, 8]`` | post-ReLU, channel-shuffled (``f2``) |
| ``layer3`` | ``[B, 464, 4, 4]`` | post-ReLU, channel-shuffled (``f3``) |
| ``conv2`` / ``bn2`` | ``[B, 1024, 4, 4]`` | none (1x1 convolution / its BatchNorm) |
| ``relu2`` | ``[B, 1024, 4, 4]`` | post-ReLU: the final feature map |
| ``pool`` | ``[B, 1024]`` | global average of ``relu2`` (``f4``) |
| ``linear`` | ``[B, num_classes]`` | logits |

The stages keep the reference's names ``layer1..3`` (the paper's stages 2-4); ``layerN.0`` is the down-sampling unit.
A stage's output is its last unit's: half the channels passed through, half after the unit's final ReLU, then
shuffled. RepDistiller's ``preact=True`` features (before that ReLU, and not shuffled) are not a module output here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kd_lightning.models.cifar._layers import ChannelShuffle, global_pool


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, groups=channels, bias=False)


def _pointwise(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class BasicUnit(nn.Module):
    """Split the channels in halves; pass the first through, run the second through 1x1 + ReLU, 3x3 depthwise, 1x1 +
    ReLU; concatenate and shuffle.

    Args:
        channels: input and output channels.
        split_ratio: fraction of the channels passed through.
    """

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split_ratio = split_ratio
        branch = int(channels * split_ratio)
        self.conv1 = _pointwise(branch, branch)
        self.bn1 = nn.BatchNorm2d(branch)
        self.relu1 = nn.ReLU()
        self.conv2 = _depthwise(branch, stride=1)
        self.bn2 = nn.BatchNorm2d(branch)
        self.conv3 = _pointwise(branch, branch)
        self.bn3 = nn.BatchNorm2d(branch)
        self.relu3 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        kept = int(x.shape[1] * self.split_ratio)
        passed, branch = x[:, :kept], x[:, kept:]
        branch = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(branch)))))
        branch = self.relu3(self.bn3(self.conv3(branch)))
        return self.shuffle(torch.cat([passed, branch], 1))


class DownUnit(nn.Module):
    """Stride-2 unit: two branches on the whole input, each ending in ``out_channels // 2`` channels after a ReLU;
    concatenate and shuffle.

    The left branch is 3x3 depthwise (stride 2), 1x1 + ReLU; the right one 1x1 + ReLU, 3x3 depthwise (stride 2),
    1x1 + ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid_channels = out_channels // 2
        self.conv1 = _depthwise(in_channels, stride=2)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = _pointwise(in_channels, mid_channels)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.relu2 = nn.ReLU()
        self.conv3 = _pointwise(in_channels, mid_channels)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.relu3 = nn.ReLU()
        self.conv4 = _depthwise(mid_channels, stride=2)
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = _pointwise(mid_channels, mid_channels)
        self.bn5 = nn.BatchNorm2d(mid_channels)
        self.relu5 = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(self.relu3(self.bn3(self.conv3(x)))))
        right = self.relu5(self.bn5(self.conv5(right)))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for CIFAR (see the module docstring for the named outputs and their shapes).

    Args:
        widths: output channels of the three stages and of the last 1x1 convolution.
        num_blocks: basic units per stage, after its down-sampling unit.
        num_classes: number of output classes.
    """

    def __init__(
        self,
        widths: Sequence[int] = (116, 232, 464, 1024),
        num_blocks: Sequence[int] = (3, 7, 3),
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(num_blocks) != 3:
            raise ValueError(f"expected 4 widths and 3 block counts but got {widths!r} and {num_blocks!r}.")
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu1 = nn.ReLU()
        stage_inputs = (24, *widths[:2])
        self.layer1 = self._make_stage(stage_inputs[0], widths[0], num_blocks[0])
        self.layer2 = self._make_stage(stage_inputs[1], widths[1], num_blocks[1])
        self.layer3 = self._make_stage(stage_inputs[2], widths[2], num_blocks[2])
        self.conv2 = _pointwise(widths[2], widths[3])
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.relu2 = nn.ReLU()
        self.pool = global_pool()
        self.linear = nn.Linear(widths[3], num_classes)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, num_blocks: int) -> nn.Sequential:
        return nn.Sequential(DownUnit(in_channels, out_channels), *(BasicUnit(out_channels) for _ in range(num_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.pool(self.relu2(self.bn2(self.conv2(x)))))


def ShuffleV2(num_classes: int = 100) -> nn.Module:  # noqa: N802 (the benchmark's name)
    """The benchmark's ShuffleNetV2 1x student (1,355,528 parameters at 100 classes)."""
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes=num_classes)
