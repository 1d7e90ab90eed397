"""Every YAML under configs/ parses, instantiates and runs a real (tiny) fit + test through the CLI."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import CONFIGS, ROOT, tiny_fit
from jsonargparse import ArgumentParser
from torch import nn

from kd_lightning import losses
from kd_lightning.callbacks.export import save_state_dict
from kd_lightning.cli import build_cli
from kd_lightning.modules import DistillationModule

ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
PARTIAL = CONFIGS / "loggers"  # composed with a recipe by a second --config; run by tests/test_loggers.py
RUN_CONFIGS = [path for path in ALL_CONFIGS if PARTIAL not in path.parents]
TINY_BUDGET = [
    *tiny_fit(limit_train_batches=3, limit_val_batches=2, test_after_fit=True),
    "--report.max_seconds=0.05",  # the report's timing: a glance, not a benchmark
    "--report.throughput_batch=8",
]


SYNTHETIC_DATA = {
    # recipes whose data cannot exist here (CIFAR, ImageNet) run on seeded synthetic images of the same kind
    "cifar100": {"num_classes": 100, "image_size": 32},
    "imagenet": {"num_classes": 1000, "image_size": 64},
}


SINGLE_CPU = {
    # multi-GPU recipes run here in one CPU process (test_gpu_recipes_ask_for_ddp_and_bf16 checks their settings)
    "imagenet": [
        f"--trainer.{key}={value}"
        for key, value in (("accelerator", "cpu"), ("devices", 1), ("strategy", "auto"), ("precision", 32))
    ],
}


def config_id(path):
    return str(path.relative_to(CONFIGS))


def data_overrides(config: Path) -> list[str]:
    """Swap the datamodule of a recipe whose dataset is not on this machine for a small synthetic one."""
    shape = SYNTHETIC_DATA.get(config.parent.name)
    if shape is None:
        return []
    sizes = {"batch_size": 8, "train_size": 32, "val_size": 16, "test_size": 16, "num_workers": 0, **shape}
    swapped = [f"--data.init_args.{key}={value}" for key, value in sizes.items()]
    return ["--data=kd_lightning.data.SyntheticImageDataModule", *swapped, *SINGLE_CPU.get(config.parent.name, [])]


def test_gpu_recipes_ask_for_ddp_and_bf16():
    for config in sorted((CONFIGS / "imagenet").glob("*.yaml")):
        trainer = yaml.safe_load(config.read_text())["trainer"]
        assert trainer["strategy"] == "ddp" and trainer["precision"] == "bf16-mixed" and trainer["devices"] > 1


def stand_in_teacher(config: Path, project: Path) -> None:
    """Write randomly initialised weights where a recipe expects a trained teacher that this machine cannot have."""
    model = yaml.safe_load(config.read_text())["model"]["init_args"]
    path = model.get("teacher_weights")
    if path is None or (project / path).exists():
        return
    parser = ArgumentParser()
    parser.add_argument("--teacher", type=nn.Module)
    teacher = parser.instantiate_classes(parser.parse_object({"teacher": model["teacher"]})).teacher
    save_state_dict(teacher.state_dict(), project / path)


STORE_SOURCES = {"minilm_l3_store.yaml": "minilm_l3.yaml"}
"""Recipes that train from a token store, and the recipe whose teacher labels it."""
STORE_SENTENCES = [
    f"The {noun} module provides {count} functions for working with {topic} in a portable way."
    for count, (noun, topic) in enumerate(
        [("os", "files"), ("json", "documents"), ("re", "patterns"), ("math", "numbers"), ("time", "clocks")] * 12
    )
]


def stand_in_store(config: Path, project: Path) -> list[str]:
    """For a recipe that trains from a token store, label a small one first (a few sentences instead of the corpus);
    return the data overrides the fit must use too."""
    teacher = yaml.safe_load(config.read_text())["model"]["init_args"].get("teacher")
    if config.name not in STORE_SOURCES:
        assert "TokenStoreTeacher" not in str(teacher), f"add {config.name} to STORE_SOURCES"
        return []
    from kd_lightning.cli.label import run

    overrides = ["--data.init_args.corpus=null", f"--data.init_args.texts={json.dumps(STORE_SENTENCES)}"]
    store = project / teacher["init_args"]["path"]
    if not store.exists():
        run(["--config", str(config.with_name(STORE_SOURCES[config.name])), "--store", str(store), *overrides])
    return overrides


def config_cli(config: Path, project: Path, *extra: str):
    """The CLI for ``config`` in the project copy, with stand-ins for data and teachers this machine cannot have."""
    stand_in_teacher(config, project)
    stores = stand_in_store(config, project)
    return build_cli(["--config", str(config), *data_overrides(config), *stores, *extra], run=False)


def test_there_are_configs():
    assert len(ALL_CONFIGS) >= 3


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_id)
def test_config_has_a_header_saying_how_to_run_it(config):
    header = [line for line in config.read_text().splitlines() if line.startswith("#")]
    assert header and any("kd-lightning fit --config" in line for line in header), f"{config} lacks a header"


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=config_id)
def test_config_instantiates(config, in_project_copy):
    cli = config_cli(config, in_project_copy)
    assert isinstance(cli.model, DistillationModule)
    assert cli.model.num_classes == cli.datamodule.num_classes
    trainable = [p for p in cli.model.parameters() if p.requires_grad]
    assert trainable, "nothing to train"


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=config_id)
def test_config_fits_and_tests(config, in_project_copy):
    cli = config_cli(config, in_project_copy, *TINY_BUDGET)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step > 0
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule)
    if config.name in STORE_SOURCES:  # an encoder trained from stored outputs: no live teacher to compare with
        assert "test/cosine" not in results and "test/acc" not in results
        return
    key = "test/cosine" if "test/cosine" in results else "test/acc"  # a sentence encoder has no classes
    assert -1.0 <= results[key] <= 1.0


def _method_config(loss_class: str):
    method = loss_class.removesuffix("Loss").lower()
    return CONFIGS / "digits" / ("offline_kd.yaml" if method == "kd" else f"{method}.yaml")


LOSS_CLASSES = [name for name in losses.__all__ if name.endswith("Loss") and name[0].isupper()]


SEQUENCE_LOSSES = {name for name in LOSS_CLASSES if issubclass(getattr(losses, name), losses.TokenLoss)}
SEQUENCE_CONFIGS = {
    "ForwardKLLoss": "gpt2_tiny_kd.yaml",
    "GeneralizedJSDLoss": "gpt2_tiny_gkd.yaml",
    "ReverseKLLoss": "gpt2_tiny_reverse_kl.yaml",
    "SkewKLLoss": "gpt2_tiny_skew_kl.yaml",
    "SkewReverseKLLoss": "gpt2_tiny_skew_reverse_kl.yaml",
    "TVDLoss": "gpt2_tiny_tvd.yaml",
    "HiddenCosineLoss": "minilm_l3.yaml",
    "HiddenMSELoss": "minilm_l3.yaml",
    "EmbeddingCosineLoss": "minilm_l3.yaml",
    "PairwiseCosineLoss": "minilm_l3.yaml",
    "ULDLoss": "gpt2_tiny_uld.yaml",
    "SpanAlignedKLLoss": "gpt2_tiny_span_kl.yaml",
}


@pytest.mark.parametrize("loss_class", [name for name in LOSS_CLASSES if name not in {"DistillationLoss", "TokenLoss"}])
def test_every_loss_has_a_config_of_its_own(loss_class):
    """Image losses: a digits config per method; sequence losses: a text config (a language model or an encoder)."""
    if loss_class in SEQUENCE_LOSSES or loss_class in SEQUENCE_CONFIGS:
        config = CONFIGS / "text" / SEQUENCE_CONFIGS[loss_class]
    else:
        config = _method_config(loss_class)
    assert config.is_file(), f"no config for {loss_class}: expected {config.relative_to(ROOT)}"
    assert f"kd_lightning.losses.{loss_class}" in config.read_text()


def _accuracy_benchmark():
    spec = importlib.util.spec_from_file_location("accuracy_benchmark", ROOT / "benchmarks" / "accuracy.py")
    accuracy = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = accuracy  # dataclasses look their module up there
    spec.loader.exec_module(accuracy)
    return accuracy


def test_every_benchmark_row_has_a_config_and_a_student_alone():
    accuracy = _accuracy_benchmark()
    missing = [row.config for row in accuracy.ROWS if not (accuracy.CONFIGS / row.config).is_file()]
    assert not missing
    groups = accuracy.plan(None)
    assert sum(len(rows) - 1 for rows in groups.values()) == len(accuracy.ROWS)
    for rows in groups.values():
        alone, *methods = rows
        assert alone.config == "baseline.yaml" and methods
        assert all(accuracy.config_student(row) == alone.student for row in methods)


def test_benchmark_rows_with_their_own_student_or_overrides_instantiate_as_described(in_project_copy):
    accuracy = _accuracy_benchmark()
    alone = [rows[0] for rows in accuracy.plan(None).values()]
    special = alone + [row for row in accuracy.ROWS if row.student is not None or row.overrides]
    assert len(special) > len(alone)
    for row in special:
        cli = build_cli(["--config", str(accuracy.CONFIGS / row.config), *accuracy.row_arguments(row)], run=False)
        if row.student is not None:  # the network the row's student spec builds (a class, or a factory function)
            parser = ArgumentParser()
            parser.add_argument("--net", type=nn.Module)
            expected = parser.instantiate_classes(parser.parse_object({"net": row.student})).net
            assert type(cli.model.student) is type(expected)
        if row.overrides:
            assert [term.weight for term in cli.model.objective.terms] == [62.5, 62.5, 62.5]
            assert [term.student_names for term in cli.model.objective.terms] == [(s,) for s in accuracy.STAGES]
