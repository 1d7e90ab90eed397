"""Plain networks and builders (``nn.Module``s returning logits): the 8x8-digits networks, the CIFAR benchmark zoo,
timm/torchvision/Hugging Face builders, and students made from a teacher (shallow, quantized, layer copies).

May import: ``kd_lightning.losses``, ``core``, ``files``.
"""

from kd_lightning.models.cifar import (
    CIFAR_NETWORKS,
    MobileNetV2,
    ResNet50,
    ShuffleV1,
    ShuffleV2,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
    vgg8,
    vgg11,
    vgg13,
    vgg16,
    vgg19,
    wrn_16_1,
    wrn_16_2,
    wrn_40_1,
    wrn_40_2,
)
from kd_lightning.models.deit import DISTILLATION_HEAD, DistilledViT, cifar_deit_tiny, deit_student
from kd_lightning.models.digits import DigitsCNN, DigitsMLP, TinyCNN
from kd_lightning.models.hub import timm_model, torchvision_model
from kd_lightning.models.quantized import (
    QuantizedNetwork,
    convert_quantized,
    int8_runtime,
    quantized_copy,
    save_quantized,
)
from kd_lightning.models.shallow import shallow_copy
from kd_lightning.models.text import maximally_spaced_layers, model_from_config, pretrained_model, student_from_teacher

__all__ = [
    "CIFAR_NETWORKS",
    "DISTILLATION_HEAD",
    "DigitsCNN",
    "DigitsMLP",
    "DistilledViT",
    "MobileNetV2",
    "QuantizedNetwork",
    "ResNet50",
    "ShuffleV1",
    "ShuffleV2",
    "TinyCNN",
    "cifar_deit_tiny",
    "convert_quantized",
    "deit_student",
    "int8_runtime",
    "maximally_spaced_layers",
    "model_from_config",
    "pretrained_model",
    "quantized_copy",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
    "save_quantized",
    "shallow_copy",
    "student_from_teacher",
    "timm_model",
    "torchvision_model",
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
