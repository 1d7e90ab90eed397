"""The wide residual networks of the KD benchmark: ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1`` and ``wrn_40_2``.

Paper: Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (WRN-d-k: depth ``d = 6n + 4``, widening factor
``k``; pre-activation blocks, BN-ReLU before each convolution). Benchmark source: the CRD / RepDistiller zoo
(``HobbitLong/RepDistiller`` ``models/wrn.py``, also used by ``megvii-research/mdistiller``). The layers, parameter
names and initialisation are the reference's, so its CIFAR-100 checkpoints load with ``load_state_dict``.

Named outputs for a ``[B, 3, 32, 32]`` input and widening factor ``k``:

| name | output | activation |
|---|---|---|
| ``conv1`` | ``[B, 16, 32, 32]`` | none (RepDistiller's ``f0``) |
| ``block1`` | ``[B, 16k, 32, 32]`` | none: a residual sum, pre-activation (``f1``) |
| ``block2`` | ``[B, 32k, 16, 16]`` | none (``f2``) |
| ``block3`` | ``[B, 64k, 8, 8]`` | none (``f3``) |
| ``bn1`` | ``[B, 64k, 8, 8]`` | BatchNorm of ``block3``, before the ReLU (``f3`` with ``preact=True``) |
| ``relu`` | ``[B, 64k, 8, 8]`` | post-ReLU: the final feature map |
| ``pool`` | ``[B, 64k]`` | global average of ``relu`` (``f4``) |
| ``fc`` | ``[B, num_classes]`` | logits |

Because the blocks are pre-activation, a stage's output has no activation of its own; the BN that the next stage
applies to it is ``block2.layer.0.bn1`` (of ``block1``) and ``block3.layer.0.bn1`` (of ``block2``): these are
RepDistiller's ``preact=True`` features ``f1`` and ``f2``.
"""

from __future__ import annotations

from torch import Tensor, nn

from kd_lightning.models.cifar._layers import global_pool, init_normal_fan_out_


class WideBasicBlock(nn.Module):
    """Pre-activation block: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``.

    Where the shape changes, the shortcut is a 1x1 convolution (``convShortcut``) of the activated input
    ``relu(bn1(x))``; otherwise it is ``x`` itself.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution and of the shortcut.
        dropout: dropout probability between the two convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.convShortcut = (  # the reference's name, kept for its checkpoints' keys
            None
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(activated)))))
        return out + (x if self.convShortcut is None else self.convShortcut(activated))


class WideStage(nn.Module):
    """``num_blocks`` wide blocks in ``self.layer`` (the reference's ``NetworkBlock``; the name keeps its keys).

    Args:
        num_blocks: blocks in the stage.
        in_channels: input channels of the first block.
        out_channels: output channels of every block.
        stride: stride of the first block.
        dropout: dropout probability inside each block.
    """

    def __init__(self, num_blocks: int, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1, dropout)
                for i in range(num_blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for CIFAR (see the module docstring for the named outputs and their shapes).

    Args:
        depth: ``6n + 4`` (``n`` blocks per stage), e.g. 16 or 40.
        widen_factor: the width multiplier ``k`` of the three stages (16k, 32k, 64k channels).
        num_classes: number of output classes.
        dropout: dropout probability inside each block (0 in the benchmark).
    """

    def __init__(self, depth: int, widen_factor: int = 1, num_classes: int = 100, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"expected depth = 6n + 4 (e.g. 16, 28, 40) but got {depth}.")
        num_blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(num_blocks, widths[0], widths[1], 1, dropout)
        self.block2 = WideStage(num_blocks, widths[1], widths[2], 2, dropout)
        self.block3 = WideStage(num_blocks, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = global_pool()
        self.fc = nn.Linear(widths[3], num_classes)
        init_normal_fan_out_(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn1(x))))


def wrn_16_1(num_classes: int = 100) -> nn.Module:
    """WRN-16-1, a benchmark student (180,916 parameters at 100 classes)."""
    return WideResNet(16, 1, num_classes)


def wrn_16_2(num_classes: int = 100) -> nn.Module:
    """WRN-16-2, a benchmark student (703,284 parameters at 100 classes)."""
    return WideResNet(16, 2, num_classes)


def wrn_40_1(num_classes: int = 100) -> nn.Module:
    """WRN-40-1, a benchmark student (569,780 parameters at 100 classes)."""
    return WideResNet(40, 1, num_classes)


def wrn_40_2(num_classes: int = 100) -> nn.Module:
    """WRN-40-2, a benchmark teacher (2,255,156 parameters at 100 classes)."""
    return WideResNet(40, 2, num_classes)
