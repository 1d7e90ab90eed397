"""The CIFAR ResNets of the KD benchmark: ``resnet8`` ... ``resnet110``, ``resnet8x4`` and ``resnet32x4``.

Paper: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (the 6n+2-layer CIFAR
networks of its section 4.2). Benchmark source: the CRD / RepDistiller zoo (Tian, Krishnan & Isola, "Contrastive
Representation Distillation", ICLR 2020; ``HobbitLong/RepDistiller`` ``models/resnet.py``, also used by
``megvii-research/mdistiller``). The layers, parameter names and initialisation are the reference's, so its CIFAR-100
checkpoints load with ``load_state_dict``.

Named outputs for a ``[B, 3, 32, 32]`` input, with ``w = (16, 16, 32, 64)`` (``x4`` variants: ``(32, 64, 128, 256)``):

| name | output | activation |
|---|---|---|
| ``conv1`` / ``bn1`` | ``[B, w0, 32, 32]`` | none (stem convolution / its BatchNorm) |
| ``relu`` | ``[B, w0, 32, 32]`` | post-ReLU (RepDistiller's ``f0``) |
| ``layer1`` | ``[B, w1, 32, 32]`` | post-ReLU (``f1``) |
| ``layer2`` | ``[B, w2, 16, 16]`` | post-ReLU (``f2``) |
| ``layer3`` | ``[B, w3, 8, 8]`` | post-ReLU (``f3``) |
| ``pool`` | ``[B, w3]`` | global average of ``layer3`` (``f4``) |
| ``fc`` | ``[B, num_classes]`` | logits |

A stage's output is its last block's output, after that block's final ReLU. RepDistiller's ``preact=True`` features
(the residual sum before the last ReLU, used by e.g. OFD) are not a module output here; ``layerN.<last>.bn2`` gives the
residual branch before the sum.
"""

from __future__ import annotations

from torch import Tensor, nn

from kd_lightning.models.cifar._layers import global_pool, init_kaiming_fan_out_


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The 1x1 convolution + BatchNorm shortcut where the shape changes; ``None`` (identity) where it does not."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut; output ``relu(branch + shortcut)``.

    Args:
        in_channels: input channels.
        channels: output channels.
        stride: stride of the first convolution and of the projection.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _projection(in_channels, channels, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


def _stage(in_channels: int, channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """``num_blocks`` basic blocks; the first one changes the shape (``stride``, ``in_channels -> channels``)."""
    return nn.Sequential(
        BasicBlock(in_channels, channels, stride), *(BasicBlock(channels, channels) for _ in range(num_blocks - 1))
    )


class CifarResNet(nn.Module):
    """A three-stage CIFAR ResNet (see the module docstring for the named outputs and their shapes).

    Args:
        depth: number of weighted layers, ``6n + 2`` (``n`` basic blocks per stage).
        widths: channels of the stem and of the three stages, e.g. ``(16, 16, 32, 64)``.
        num_classes: number of output classes.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"expected depth = 6n + 2 (e.g. 8, 20, 32, 56, 110) but got {depth}.")
        num_blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = _stage(widths[0], widths[1], num_blocks, stride=1)
        self.layer2 = _stage(widths[1], widths[2], num_blocks, stride=2)
        self.layer3 = _stage(widths[2], widths[3], num_blocks, stride=2)
        self.pool = global_pool()
        self.fc = nn.Linear(widths[3], num_classes)
        init_kaiming_fan_out_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


_WIDTHS = (16, 16, 32, 64)
_WIDTHS_X4 = (32, 64, 128, 256)


def resnet8(num_classes: int = 100) -> nn.Module:
    """ResNet-8 for CIFAR, a benchmark student (83,892 parameters at 100 classes)."""
    return CifarResNet(8, _WIDTHS, num_classes=num_classes)


def resnet14(num_classes: int = 100) -> nn.Module:
    """ResNet-14 for CIFAR (181,108 parameters at 100 classes)."""
    return CifarResNet(14, _WIDTHS, num_classes=num_classes)


def resnet20(num_classes: int = 100) -> nn.Module:
    """ResNet-20 for CIFAR (278,324 parameters at 100 classes)."""
    return CifarResNet(20, _WIDTHS, num_classes=num_classes)


def resnet32(num_classes: int = 100) -> nn.Module:
    """ResNet-32 for CIFAR (472,756 parameters at 100 classes)."""
    return CifarResNet(32, _WIDTHS, num_classes=num_classes)


def resnet44(num_classes: int = 100) -> nn.Module:
    """ResNet-44 for CIFAR (667,188 parameters at 100 classes)."""
    return CifarResNet(44, _WIDTHS, num_classes=num_classes)


def resnet56(num_classes: int = 100) -> nn.Module:
    """ResNet-56 for CIFAR, a benchmark teacher (861,620 parameters at 100 classes)."""
    return CifarResNet(56, _WIDTHS, num_classes=num_classes)


def resnet110(num_classes: int = 100) -> nn.Module:
    """ResNet-110 for CIFAR, a benchmark teacher (1,736,564 parameters at 100 classes)."""
    return CifarResNet(110, _WIDTHS, num_classes=num_classes)


def resnet8x4(num_classes: int = 100) -> nn.Module:
    """ResNet-8 at four times the width, a benchmark student (1,233,540 parameters at 100 classes)."""
    return CifarResNet(8, _WIDTHS_X4, num_classes=num_classes)


def resnet32x4(num_classes: int = 100) -> nn.Module:
    """ResNet-32 at four times the width, a benchmark teacher (7,433,860 parameters at 100 classes)."""
    return CifarResNet(32, _WIDTHS_X4, num_classes=num_classes)
