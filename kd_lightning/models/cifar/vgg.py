"""The VGG networks of the KD benchmark, with BatchNorm: ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16`` and ``vgg19``.

Paper: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", ICLR 2015
(configurations A, B, D, E; ``vgg8`` is the benchmark's one-convolution-per-stage "S"). Benchmark source: the CRD /
RepDistiller zoo (``HobbitLong/RepDistiller`` ``models/vgg.py``, the ``*_bn`` builders, which its ``model_dict``
names ``vgg8`` ... ``vgg19``; also used by ``megvii-research/mdistiller``). As there, the fully connected layers of the
ImageNet VGG are replaced by global pooling and one linear classifier. The layers, parameter names and initialisation
are the reference's, so its CIFAR-100 checkpoints load with ``load_state_dict``.

Named outputs for a ``[B, 3, 32, 32]`` input:

| name | output | activation |
|---|---|---|
| ``block0`` | ``[B, 64, 32, 32]`` | none: BatchNorm output, before the stage's last ReLU |
| ``relu0`` | ``[B, 64, 32, 32]`` | post-ReLU (RepDistiller's ``f0``) |
| ``pool0`` | ``[B, 64, 16, 16]`` | max-pooled ``relu0`` |
| ``block1`` / ``relu1`` | ``[B, 128, 16, 16]`` | pre-ReLU (``f1`` with ``preact=True``) / post-ReLU (``f1``) |
| ``block2`` / ``relu2`` | ``[B, 256, 8, 8]`` | pre- / post-ReLU (``f2``) |
| ``block3`` / ``relu3`` | ``[B, 512, 4, 4]`` | pre- / post-ReLU (``f3``) |
| ``block4`` / ``relu4`` | ``[B, 512, 4, 4]`` | pre- / post-ReLU (``f4``) |
| ``pool`` | ``[B, 512]`` | global average of ``relu4`` (``f5``) |
| ``classifier`` | ``[B, num_classes]`` | logits |

Inside a stage, ``blockN.<i>`` are the convolutions, BatchNorms and ReLUs in order (the stage's last ReLU is
``reluN``, outside the block, as in the reference). The reference's ``pool3`` runs only for 64x64 inputs (Tiny-ImageNet)
and ``pool4`` is the global average pool: here there is no ``pool3``, and ``pool4`` is named ``pool`` like the global
pool of every network in this zoo.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from kd_lightning.models.cifar._layers import global_pool, init_normal_fan_out_

CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "S": ((64,), (128,), (256,), (512,), (512,)),
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}
"""Channels of the 3x3 convolutions of the five stages, per configuration."""


def _stage(in_channels: int, widths: Sequence[int], batch_norm: bool) -> nn.Sequential:
    """3x3 convolution (+ BatchNorm) + ReLU per width, without the last ReLU (the network applies it, as ``reluN``)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1)]
        layers += [nn.BatchNorm2d(width), nn.ReLU()] if batch_norm else [nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(nn.Sequential):
    """A five-stage VGG for CIFAR (see the module docstring for the named outputs and their shapes).

    Args:
        config: ``"S"`` (VGG-8), ``"A"`` (11), ``"B"`` (13), ``"D"`` (16) or ``"E"`` (19), or the convolution widths
            of the five stages.
        batch_norm: BatchNorm after every convolution (the benchmark's networks have it).
        num_classes: number of output classes.
    """

    def __init__(
        self, config: str | Sequence[Sequence[int]] = "S", batch_norm: bool = True, num_classes: int = 100
    ) -> None:
        super().__init__()
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"expected config to be one of {sorted(CONFIGS)} but got {config!r}.")
            config = CONFIGS[config]
        if len(config) != 5 or not all(config):
            raise ValueError(f"expected the widths of 5 stages, each a non-empty list, but got {config!r}.")
        in_channels = 3
        for index, widths in enumerate(config):
            self.add_module(f"block{index}", _stage(in_channels, widths, batch_norm))
            self.add_module(f"relu{index}", nn.ReLU())
            if index < 3:
                self.add_module(f"pool{index}", nn.MaxPool2d(kernel_size=2, stride=2))
            in_channels = widths[-1]
        self.pool = global_pool()
        self.classifier = nn.Linear(in_channels, num_classes)
        init_normal_fan_out_(self, linear_std=0.01)


def vgg8(num_classes: int = 100) -> nn.Module:
    """VGG-8 with BatchNorm, a benchmark student (RepDistiller ``vgg8_bn``; 3,965,028 parameters at 100 classes)."""
    return VGG("S", num_classes=num_classes)


def vgg11(num_classes: int = 100) -> nn.Module:
    """VGG-11 with BatchNorm (RepDistiller ``vgg11_bn``; 9,277,284 parameters at 100 classes)."""
    return VGG("A", num_classes=num_classes)


def vgg13(num_classes: int = 100) -> nn.Module:
    """VGG-13 with BatchNorm, a benchmark teacher (RepDistiller ``vgg13_bn``; 9,462,180 parameters at 100 classes)."""
    return VGG("B", num_classes=num_classes)


def vgg16(num_classes: int = 100) -> nn.Module:
    """VGG-16 with BatchNorm (RepDistiller ``vgg16_bn``; 14,774,436 parameters at 100 classes)."""
    return VGG("D", num_classes=num_classes)


def vgg19(num_classes: int = 100) -> nn.Module:
    """VGG-19 with BatchNorm (RepDistiller ``vgg19_bn``; 20,086,692 parameters at 100 classes)."""
    return VGG("E", num_classes=num_classes)
