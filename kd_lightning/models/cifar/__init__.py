"""The CIFAR networks of the CRD / RepDistiller / mdistiller knowledge-distillation benchmark.

Each builder (``resnet8x4(num_classes=100)``, ...) returns a plain ``nn.Module`` whose ``forward(x)`` maps
``[B, 3, 32, 32]`` images to logits ``[B, num_classes]``, usable from Python and from YAML
(``class_path: kd_lightning.models.resnet8x4``, ``init_args: {num_classes: 100}``). The layers, parameter names and
initialisation are those of ``HobbitLong/RepDistiller`` ``models/`` (the benchmark's published CIFAR-100 teachers load
with ``load_state_dict``), and the parameter counts equal the reference's. ``CIFAR_NETWORKS`` maps the benchmark's
names to the builders.

Feature terms tap the stages by ``named_modules()`` path with forward hooks; every network has a ``pool`` module, the
global average pool right before its classifier (RKD / PKT / CC terms read ``pool``). A tap sees the module's actual
output; where RepDistiller's ``preact=True`` features (before a stage's last ReLU) differ, each family's module
docstring says which module, if any, outputs them. No ReLU runs in place, so a tapped output is never overwritten
later in the forward pass.

| network | parameters (100 classes) | stages and their outputs ``C x H x W`` for ``[B, 3, 32, 32]`` inputs |
|---|---:|---|
| ``resnet8`` | 83,892 | layer1 16x32x32, layer2 32x16x16, layer3 64x8x8, pool 64 |
| ``resnet14`` | 181,108 | as resnet8 |
| ``resnet20`` | 278,324 | as resnet8 |
| ``resnet32`` | 472,756 | as resnet8 |
| ``resnet44`` | 667,188 | as resnet8 |
| ``resnet56`` | 861,620 | as resnet8 |
| ``resnet110`` | 1,736,564 | as resnet8 |
| ``resnet8x4`` | 1,233,540 | layer1 64x32x32, layer2 128x16x16, layer3 256x8x8, pool 256 |
| ``resnet32x4`` | 7,433,860 | as resnet8x4 |
| ``wrn_16_1`` | 180,916 | block1 16x32x32, block2 32x16x16, block3 64x8x8, relu 64x8x8, pool 64 |
| ``wrn_40_1`` | 569,780 | as wrn_16_1 |
| ``wrn_16_2`` | 703,284 | block1 32x32x32, block2 64x16x16, block3 128x8x8, relu 128x8x8, pool 128 |
| ``wrn_40_2`` | 2,255,156 | as wrn_16_2 |
| ``vgg8`` | 3,965,028 | relu0 64x32x32, relu1 128x16x16, relu2 256x8x8, relu3 512x4x4, relu4 512x4x4, pool 512 |
| ``vgg11`` | 9,277,284 | as vgg8 |
| ``vgg13`` | 9,462,180 | as vgg8 |
| ``vgg16`` | 14,774,436 | as vgg8 |
| ``vgg19`` | 20,086,692 | as vgg8 |
| ``MobileNetV2`` | 812,836 | blocks.1 12x16x16, blocks.2 16x8x8, blocks.4 48x4x4, blocks.6 160x2x2, pool 1280 |
| ``ShuffleV1`` | 949,258 | layer1 240x16x16, layer2 480x8x8, layer3 960x4x4, pool 960 |
| ``ShuffleV2`` | 1,355,528 | layer1 116x16x16, layer2 232x8x8, layer3 464x4x4, relu2 1024x4x4, pool 1024 |
| ``ResNet50`` | 23,705,252 | layer1 256x32x32, layer2 512x16x16, layer3 1024x8x8, layer4 2048x4x4, pool 2048 |

The stem's output is ``relu`` in the ResNets and ShuffleV1 (``relu1`` in ShuffleV2), ``conv1`` in the WRNs and
MobileNetV2 (16x32x32 and 16x16x16), ``relu0`` in VGG; MobileNetV2's last map, before ``pool``, is ``conv2``
(1280x2x2). All listed outputs are post-ReLU except WRN's ``block1..3`` (pre-activation residual sums: ``bn1`` is
``block3`` normalised, ``relu`` the activated map) and MobileNetV2's ``blocks.N`` (linear bottlenecks, ending in a
BatchNorm); VGG's ``block0..4`` are its ``relu0..4`` maps before the ReLU. The logits come from ``fc`` (ResNets,
WRNs), ``classifier`` (VGG, MobileNetV2) or ``linear`` (ShuffleNets, ResNet50).

Example:
    >>> import torch
    >>> from kd_lightning.core.taps import FeatureTap
    >>> with FeatureTap(resnet8(num_classes=100), ["layer3", "pool"]) as tap:
    ...     {name: tuple(value.shape) for name, value in tap(torch.randn(2, 3, 32, 32)).items()}
    {'logits': (2, 100), 'layer3': (2, 64, 8, 8), 'pool': (2, 64)}
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kd_lightning.models.cifar.mobilenetv2 import CifarMobileNetV2, MobileNetV2
from kd_lightning.models.cifar.resnet import (
    CifarResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from kd_lightning.models.cifar.resnet50 import CifarBottleneckResNet, ResNet50
from kd_lightning.models.cifar.shufflenetv1 import ShuffleNetV1, ShuffleV1
from kd_lightning.models.cifar.shufflenetv2 import ShuffleNetV2, ShuffleV2
from kd_lightning.models.cifar.vgg import VGG, vgg8, vgg11, vgg13, vgg16, vgg19
from kd_lightning.models.cifar.wrn import WideResNet, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

CIFAR_NETWORKS: dict[str, Callable[..., nn.Module]] = {
    builder.__name__: builder
    for builder in (
        resnet8,
        resnet14,
        resnet20,
        resnet32,
        resnet44,
        resnet56,
        resnet110,
        resnet8x4,
        resnet32x4,
        wrn_16_1,
        wrn_16_2,
        wrn_40_1,
        wrn_40_2,
        vgg8,
        vgg11,
        vgg13,
        vgg16,
        vgg19,
        MobileNetV2,
        ShuffleV1,
        ShuffleV2,
        ResNet50,
    )
}
"""The benchmark's network names (RepDistiller's ``model_dict`` keys) -> builders taking ``num_classes``."""

__all__ = [
    "CIFAR_NETWORKS",
    "VGG",
    "CifarBottleneckResNet",
    "CifarMobileNetV2",
    "CifarResNet",
    "MobileNetV2",
    "ResNet50",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "ShuffleV1",
    "ShuffleV2",
    "WideResNet",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]
