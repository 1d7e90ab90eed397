"""Mistakes in image runs and their configs: networks whose first layer does not take the data's images, input shapes
given without their channels, dict batches whose labels are under another key, optimizer and scheduler class paths
with typos, and config files without settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from helpers import CONFIGS, fast_trainer
from mistakes.catalogue import SHORT, ApiMistake, CliMistake, write
from torch.utils.data import DataLoader

from kd_lightning import Classifier

DIGITS = CONFIGS / "digits"
MLP = "class_path: kd_lightning.models.DigitsMLP\n      init_args: {num_classes: 10, hidden: [32]}"
CNN_TEACHER = (
    "    teacher:\n      class_path: kd_lightning.models.DigitsCNN\n      init_args: {num_classes: 10, width: 32}\n"
    "    teacher_weights: checkpoints/digits_teacher.safetensors\n"
)
DIGITS_DATA = "  class_path: kd_lightning.DigitsDataModule\n  init_args: {batch_size: 64, augment: false, seed: 0}"


def synthetic(channels: int, size: int) -> str:
    """The data section of random class-pattern images ``[channels, size, size]`` with 10 classes."""
    return (
        "  class_path: kd_lightning.SyntheticImageDataModule\n  init_args: {num_classes: 10, channels: "
        f"{channels}, image_size: {size}, train_size: 64, batch_size: 16}}"
    )


def digits_edited(config: str, *edits: tuple[str, str]) -> Callable[[Path], list[str]]:
    """A command line running ``configs/digits/<config>`` with YAML edits, on the tiny budget."""

    def args(project: Path) -> list[str]:
        text = (DIGITS / config).read_text()
        for old, new in edits:
            assert old in text, f"{old!r} not in {config}"
            text = text.replace(old, new, 1)
        return ["fit", "--config", write(project, "edited.yaml", text), *SHORT]

    return args


def with_config(text: str, *before: str) -> Callable[[Path], list[str]]:
    """A command line with the config file ``my_run.yaml`` holding ``text`` (after the ``before`` configs)."""

    def args(project: Path) -> list[str]:
        configs = [arg for config in before for arg in ("--config", str(DIGITS / config))]
        return ["fit", *configs, "--config", write(project, "my_run.yaml", text), *SHORT]

    return args


def dict_batches_with(key: str) -> Callable[[dict], None]:
    """Fit a sequence classifier on Hugging Face-style dict batches whose labels are under ``key``."""

    def run(record: dict) -> None:
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        network = BertForSequenceClassification(config)
        ids = torch.randint(5, 64, (16, 12), generator=torch.Generator().manual_seed(0))
        items = [
            {"input_ids": row, "attention_mask": torch.ones_like(row), key: torch.tensor(i % 2)}
            for i, row in enumerate(ids)
        ]
        record["trainer"] = trainer = fast_trainer(record["tmp"], max_steps=2)
        trainer.fit(Classifier(network, num_classes=2), train_dataloaders=DataLoader(items, batch_size=8))

    return run


CLI_MISTAKES = [
    # methods that need more than the outputs: DeiT's two heads, CRD's per-sample memory
    CliMistake(
        "DeiT's distillation token with no hard-label loss on the class head",
        digits_edited("harddistillation.yaml", ("ce_weight: 0.5", "ce_weight: 0.0")),
        ("DistilledViT trained with ce_weight: 0", "class head never learns the labels", "set ce_weight > 0"),
        1,
    ),
    CliMistake(
        "CRD on batches without sample indices",
        digits_edited("crd.yaml", ("seed: 0, return_index: true", "seed: 0, return_index: false")),
        ("keeps a row per training sample", "data.init_args.return_index"),
        1,
    ),
    # the data's images against the network's first layer
    CliMistake(
        "3-channel timm teacher on 1-channel digits",
        digits_edited(
            "offline_kd.yaml",
            (
                CNN_TEACHER,
                "    teacher:\n      class_path: kd_lightning.models.timm_model\n"
                "      init_args: {name: resnet10t, num_classes: 10}\n    allow_untrained_teacher: true\n",
            ),
        ),
        ("the teacher (ResNet) takes 3-channel images", "1-channel images [B, 1, 8, 8]", "timm_model in_chans: 1"),
        1,
    ),
    CliMistake(
        "torchvision ResNet-18 student on 1-channel digits",
        digits_edited(
            "baseline.yaml",
            (
                MLP,
                "class_path: kd_lightning.models.torchvision_model\n      init_args: {name: resnet18, num_classes: 10}",
            ),
        ),
        ("the student (ResNet) takes 3-channel images", "conv1", "Grayscale(num_output_channels=3)"),
        1,
    ),
    CliMistake(
        "1-channel DigitsCNN on 3-channel images",
        digits_edited(
            "baseline.yaml",
            (MLP, "class_path: kd_lightning.models.DigitsCNN\n      init_args: {num_classes: 10, width: 8}"),
            (DIGITS_DATA, synthetic(3, 8)),
        ),
        ("the student (DigitsCNN) takes 1-channel images", "3-channel images [B, 3, 8, 8]", "stem.0"),
        1,
    ),
    CliMistake(
        "DigitsMLP on 32x32 colour images",
        digits_edited("baseline.yaml", (DIGITS_DATA, synthetic(3, 32))),
        ("DigitsMLP) takes 64 input values", "[B, 3, 32, 32], 3,072 values", "in_features: 3072"),
        1,
    ),
    # input shapes without their channels
    CliMistake(
        "quantized_copy given input_shape 8, 8 (no channels)",
        digits_edited(
            "qad.yaml",
            (
                "        weights: checkpoints/digits_teacher.safetensors\n    teacher:",
                "        weights: checkpoints/digits_teacher.safetensors\n        input_shape: [8, 8]\n    teacher:",
            ),
        ),
        ("input_shape: expected [channels, height, width]", "[8, 8]", "without the channels", "[1, 8, 8]"),
        2,
    ),
    CliMistake(
        "shallow_copy traced on 3-channel inputs",
        digits_edited(
            "shallow_kd.yaml",
            (
                "        keep: [stem, layer2, layer3]\n",
                "        keep: [stem, layer2, layer3]\n        input_shape: [3, 8, 8]\n",
            ),
        ),
        ("input_shape: expected 1 channel first", "got [3, 8, 8]", "pass input_shape [1, 8, 8]"),
        2,
    ),
    # optimizer and scheduler class paths
    CliMistake(
        "optimizer class_path with a typo",
        digits_edited("offline_kd.yaml", ("torch.optim.AdamW", "torch.optim.AdamWW")),
        ("cannot import class_path 'torch.optim.AdamWW'", "did you mean 'torch.optim.AdamW'?", "optimizer.class_path"),
        2,
    ),
    CliMistake(
        "scheduler class_path in torch.optim instead of torch.optim.lr_scheduler",
        digits_edited(
            "offline_kd.yaml", ("torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.CosineAnnealingLR")
        ),
        ("'torch.optim.CosineAnnealingLR'", "did you mean 'torch.optim.lr_scheduler.CosineAnnealingLR'?"),
        2,
    ),
    CliMistake(
        "scheduler class name in the wrong case",
        digits_edited(
            "baseline.yaml",
            ("torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.lr_scheduler.CosineAnnealingLr"),
        ),
        ("did you mean 'torch.optim.lr_scheduler.CosineAnnealingLR'?", "model.init_args.lr_scheduler.class_path"),
        2,
    ),
    CliMistake(
        "optimizer module misspelled",
        digits_edited("baseline.yaml", ("torch.optim.AdamW", "torch.optm.AdamW")),
        ("'torch.optm.AdamW'", "did you mean 'torch.optim.AdamW'?"),
        2,
    ),
    # config files without settings
    CliMistake(
        "empty config file",
        with_config(""),
        ("my_run.yaml' holds no settings", "start from a recipe", "cp configs/digits/offline_kd.yaml"),
        2,
    ),
    CliMistake(
        "overlay config of comments only",
        with_config("# TODO: a lower learning rate\n", "offline_kd.yaml"),
        ("my_run.yaml' holds no settings", "or drop --config"),
        2,
    ),
    CliMistake(
        "config written as a YAML list",
        with_config("- trainer: {max_epochs: 1}\n- model: {class_path: kd_lightning.Classifier}\n"),
        ("holds a YAML list", "not a mapping of settings", "trainer: {...}, model: {class_path"),
        2,
    ),
]


API_MISTAKES = [
    ApiMistake(
        "dict batch with 'label' instead of 'labels'",
        dict_batches_with("label"),
        ValueError,
        ("under the key 'labels'", "'label' is not read as labels", "rename the key to 'labels'"),
    ),
    ApiMistake(
        "dict batch with 'label_ids' instead of 'labels'",
        dict_batches_with("label_ids"),
        ValueError,
        ("'label_ids' is not read as labels", "rename_column('label_ids', 'labels')"),
    ),
]
