"""The CIFAR benchmark zoo against the reference code (HobbitLong/RepDistiller ``models/``).

The expected numbers were computed by instantiating the reference networks themselves with ``num_classes=100``:
parameter counts, the shapes of RepDistiller's ``is_feat`` features (here: of the modules named below, read by forward
hooks) and a digest of the state-dict layout (keys and shapes, in order), so the reference's checkpoints load.
"""

from __future__ import annotations

import hashlib
import inspect

import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser
from torch import nn

import kd_lightning.models
from kd_lightning.cli import build_cli
from kd_lightning.core.taps import FeatureTap
from kd_lightning.models import CIFAR_NETWORKS

RESNET = {"relu": (16, 32, 32), "layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8), "pool": (64,)}
RESNET_X4 = {
    "relu": (32, 32, 32),
    "layer1": (64, 32, 32),
    "layer2": (128, 16, 16),
    "layer3": (256, 8, 8),
    "pool": (256,),
}
RESNET50 = {
    "relu": (64, 32, 32),
    "layer1": (256, 32, 32),
    "layer2": (512, 16, 16),
    "layer3": (1024, 8, 8),
    "layer4": (2048, 4, 4),
    "pool": (2048,),
}
WRN_1 = {
    "conv1": (16, 32, 32),
    "block1": (16, 32, 32),
    "block2": (32, 16, 16),
    "block3": (64, 8, 8),
    "block2.layer.0.bn1": (16, 32, 32),  # RepDistiller's preact=True f1
    "block3.layer.0.bn1": (32, 16, 16),  # preact f2
    "bn1": (64, 8, 8),  # preact f3
    "relu": (64, 8, 8),
    "pool": (64,),
}
WRN_2 = {
    "conv1": (16, 32, 32),
    "block1": (32, 32, 32),
    "block2": (64, 16, 16),
    "block3": (128, 8, 8),
    "block2.layer.0.bn1": (32, 32, 32),
    "block3.layer.0.bn1": (64, 16, 16),
    "bn1": (128, 8, 8),
    "relu": (128, 8, 8),
    "pool": (128,),
}
VGG = {
    **{f"{kind}0": (64, 32, 32) for kind in ("block", "relu")},  # block: before the stage's last ReLU (preact)
    **{f"{kind}1": (128, 16, 16) for kind in ("block", "relu")},
    **{f"{kind}2": (256, 8, 8) for kind in ("block", "relu")},
    **{f"{kind}3": (512, 4, 4) for kind in ("block", "relu")},
    **{f"{kind}4": (512, 4, 4) for kind in ("block", "relu")},
    "pool": (512,),
}
MOBILENET_V2 = {
    "conv1": (16, 16, 16),
    "blocks.0": (8, 16, 16),
    "blocks.1": (12, 16, 16),
    "blocks.2": (16, 8, 8),
    "blocks.3": (32, 4, 4),
    "blocks.4": (48, 4, 4),
    "blocks.5": (80, 2, 2),
    "blocks.6": (160, 2, 2),
    "conv2": (1280, 2, 2),
    "pool": (1280,),
}
SHUFFLE_V1 = {
    "relu": (24, 32, 32),
    "layer1": (240, 16, 16),
    "layer2": (480, 8, 8),
    "layer3": (960, 4, 4),
    "pool": (960,),
}
SHUFFLE_V2 = {
    "relu1": (24, 32, 32),
    "layer1": (116, 16, 16),
    "layer2": (232, 8, 8),
    "layer3": (464, 4, 4),
    "relu2": (1024, 4, 4),
    "pool": (1024,),
}

# name: (parameters at 100 classes, classifier module, stage shapes without the batch, state-dict layout digest)
REFERENCE = {
    "resnet8": (83_892, "fc", RESNET, "ac039310c98e68d8"),
    "resnet14": (181_108, "fc", RESNET, "92530df46a51a173"),
    "resnet20": (278_324, "fc", RESNET, "48702a589dcc22ab"),
    "resnet32": (472_756, "fc", RESNET, "e488f60b23a4db1c"),
    "resnet44": (667_188, "fc", RESNET, "fcf7a5a278e22506"),
    "resnet56": (861_620, "fc", RESNET, "1d3465ca54c565c3"),
    "resnet110": (1_736_564, "fc", RESNET, "932a055377884f91"),
    "resnet8x4": (1_233_540, "fc", RESNET_X4, "4b191cfaf50907ea"),
    "resnet32x4": (7_433_860, "fc", RESNET_X4, "670cd82105052059"),
    "wrn_16_1": (180_916, "fc", WRN_1, "cc273e84a60cb768"),
    "wrn_16_2": (703_284, "fc", WRN_2, "28fc720be1913fd2"),
    "wrn_40_1": (569_780, "fc", WRN_1, "f8967803e64be646"),
    "wrn_40_2": (2_255_156, "fc", WRN_2, "029bbe2cbcd6d721"),
    "vgg8": (3_965_028, "classifier", VGG, "792c36c85a183c23"),
    "vgg11": (9_277_284, "classifier", VGG, "7edcbfd7d4b24633"),
    "vgg13": (9_462_180, "classifier", VGG, "adbafd0e22ce9038"),
    "vgg16": (14_774_436, "classifier", VGG, "4b0f395fe5fbd954"),
    "vgg19": (20_086_692, "classifier", VGG, "0820bef0b1c3cee0"),
    "MobileNetV2": (812_836, "classifier", MOBILENET_V2, "67dd5adb2196190e"),
    "ShuffleV1": (949_258, "linear", SHUFFLE_V1, "542ef1e4af09fe27"),
    "ShuffleV2": (1_355_528, "linear", SHUFFLE_V2, "db138f467cd82af3"),
    "ResNet50": (23_705_252, "linear", RESNET50, "01c941c55d8830fa"),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def layout_digest(network: nn.Module) -> str:
    """sha256 of the state dict's ``key:shape`` lines, in order (the same function was run on the reference)."""
    layout = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in network.state_dict().items())
    return hashlib.sha256(layout.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", list(REFERENCE))
def test_network_matches_the_reference(name):
    parameters, classifier, stages, digest = REFERENCE[name]
    torch.manual_seed(0)
    network = CIFAR_NETWORKS[name](num_classes=100).eval()
    assert sum(p.numel() for p in network.parameters()) == parameters
    assert layout_digest(network) == digest, "state-dict keys or shapes differ from the reference's checkpoints"
    assert not [n for n, m in network.named_modules() if getattr(m, "inplace", False)], "a tapped output must stay"

    with FeatureTap(network, list(stages), role=name) as tap, torch.no_grad():
        outputs = tap(torch.randn(2, 3, 32, 32))
        head = network.get_submodule(classifier)
        assert torch.equal(head(outputs["pool"]), outputs["logits"]), "pool must feed the classifier"
    assert outputs["logits"].shape == (2, 100)
    assert {key: tuple(value.shape[1:]) for key, value in outputs.items() if key != "logits"} == stages
    assert all(value.shape[0] == 2 for value in outputs.values())


def test_registry_and_exports():
    assert list(CIFAR_NETWORKS) == list(REFERENCE)
    for name, builder in CIFAR_NETWORKS.items():
        assert getattr(kd_lightning.models, name) is builder and name in kd_lightning.models.__all__
        signature = inspect.signature(builder)
        assert list(signature.parameters) == ["num_classes"] and signature.parameters["num_classes"].default == 100
        assert signature.return_annotation in (nn.Module, "nn.Module")


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "MobileNetV2", "ShuffleV2"])
def test_other_class_counts_and_input_sizes(name):
    """``num_classes`` sizes the classifier; global pooling lets inputs larger than 32x32 through."""
    network = CIFAR_NETWORKS[name](num_classes=10).eval()
    with torch.no_grad():
        assert network(torch.randn(1, 3, 32, 32)).shape == (1, 10)
        assert network(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_builders_parse_as_class_path():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)
    for name in CIFAR_NETWORKS:
        config = parser.parse_object({"net": {"class_path": f"kd_lightning.models.{name}"}})
        assert config.net.init_args.num_classes == 100
    config = parser.parse_object(
        {"net": {"class_path": "kd_lightning.models.resnet8x4", "init_args": {"num_classes": 7}}}
    )
    network = parser.instantiate_classes(config).net
    assert sum(p.numel() for p in network.parameters()) == 1_233_540 - 93 * 257
    with pytest.raises(ArgumentError, match="width"):
        parser.parse_object({"net": {"class_path": "kd_lightning.models.resnet8x4", "init_args": {"width": 2}}})


def test_builder_as_network_in_a_cli_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer: {accelerator: cpu, devices: 1, logger: false, enable_checkpointing: false}\n"
        "model:\n"
        "  class_path: kd_lightning.Classifier\n"
        "  init_args:\n"
        "    network: {class_path: kd_lightning.models.wrn_16_1, init_args: {num_classes: 10}}\n"
        "data: {class_path: kd_lightning.DigitsDataModule}\n"
    )
    cli = build_cli(["--config", str(config)], run=False)
    assert type(cli.model.student).__name__ == "WideResNet" and cli.model.student.fc.out_features == 10
