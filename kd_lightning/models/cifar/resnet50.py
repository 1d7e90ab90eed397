"""The ImageNet-layout ResNet-50 adapted to CIFAR, a KD-benchmark teacher: ``ResNet50``.

Paper: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (the 50-layer bottleneck
network, stages of 3, 4, 6, 3 blocks). Benchmark source: the CRD / RepDistiller zoo (``HobbitLong/RepDistiller``
``models/resnetv2.py``, the kuangliu/pytorch-cifar layout, also used by ``megvii-research/mdistiller``; "v2" is the
file's name there, not the pre-activation ResNet): a 3x3 stride-1 stem without max-pool, so 32x32 inputs reach 4x4.
The layers, parameter names and initialisation are the reference's, so its CIFAR-100 checkpoints load with
``load_state_dict``.

Named outputs for a ``[B, 3, 32, 32]`` input:

| name | output | activation |
|---|---|---|
| ``conv1`` / ``bn1`` | ``[B, 64, 32, 32]`` | none (stem convolution / its BatchNorm) |
| ``relu`` | ``[B, 64, 32, 32]`` | post-ReLU (RepDistiller's ``f0``) |
| ``layer1`` | ``[B, 256, 32, 32]`` | post-ReLU (``f1``) |
| ``layer2`` | ``[B, 512, 16, 16]`` | post-ReLU (``f2``) |
| ``layer3`` | ``[B, 1024, 8, 8]`` | post-ReLU (``f3``) |
| ``layer4`` | ``[B, 2048, 4, 4]`` | post-ReLU (``f4``) |
| ``pool`` | ``[B, 2048]`` | global average of ``layer4`` (``f5``) |
| ``linear`` | ``[B, num_classes]`` | logits |

A stage's output is its last block's, after the block's final ReLU; RepDistiller's ``preact=True`` features (before
that ReLU) are not a module output here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kd_lightning.models.cifar._layers import global_pool, init_kaiming_fan_out_


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4) with a shortcut (1x1 projection + BatchNorm where the shape
    changes, otherwise the identity); output ``relu(branch + shortcut)``.

    Args:
        in_channels: input channels.
        channels: channels of the 3x3 convolution; the block outputs ``4 * channels``.
        stride: stride of the 3x3 convolution and of the projection.
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.relu3(self.bn3(self.conv3(out)) + self.shortcut(x))


def _stage(in_channels: int, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """``num_blocks`` bottlenecks of ``4 * channels`` outputs; the first one takes ``in_channels`` at ``stride``."""
    out_channels = channels * BottleneckBlock.expansion
    return nn.Sequential(
        BottleneckBlock(in_channels, channels, stride),
        *(BottleneckBlock(out_channels, channels) for _ in range(num_blocks - 1)),
    )


class CifarBottleneckResNet(nn.Module):
    """A four-stage bottleneck ResNet for 32x32 inputs (see the module docstring for the named outputs).

    Args:
        num_blocks: bottleneck blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        num_classes: number of output classes.
    """

    def __init__(self, num_blocks: Sequence[int] = (3, 4, 6, 3), num_classes: int = 100) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"expected the block counts of 4 stages but got {num_blocks!r}.")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = _stage(64, 64, num_blocks[0], stride=1)
        self.layer2 = _stage(256, 128, num_blocks[1], stride=2)
        self.layer3 = _stage(512, 256, num_blocks[2], stride=2)
        self.layer4 = _stage(1024, 512, num_blocks[3], stride=2)
        self.pool = global_pool()
        self.linear = nn.Linear(512 * BottleneckBlock.expansion, num_classes)
        init_kaiming_fan_out_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.pool(x))


def ResNet50(num_classes: int = 100) -> nn.Module:  # noqa: N802 (the benchmark's name)
    """The benchmark's CIFAR ResNet-50 teacher (23,705,252 parameters at 100 classes)."""
    return CifarBottleneckResNet((3, 4, 6, 3), num_classes)
