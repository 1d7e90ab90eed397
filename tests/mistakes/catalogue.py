"""The one catalogue of realistic user mistakes: the case types, and the builders the case files use.

A case is a :class:`CliMistake` (a ``kd-lightning`` command line) or an :class:`ApiMistake` (a Python call). The cases
live by area in ``cases_*.py`` (each defines ``CLI_MISTAKES`` and/or ``API_MISTAKES``); ``test_mistakes.py`` runs them
all. Every mistake must: fail (a non-zero exit from ``kd-lightning``, or an exception from Python) with one message
that names the problem and the fix, in at most 15 lines and without a traceback; make no optimizer step; and leave
every file that existed before unchanged (the shipped teacher above all).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from helpers import CONFIGS, TEACHER_WEIGHTS, TINY_FIT, fast_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning import (
    DigitsCNN,
    DigitsDataModule,
    DigitsMLP,
    OfflineDistillation,
)
from kd_lightning.cli import main

DIGITS = CONFIGS / "digits"
SHORT = TINY_FIT
MAX_LINES = 15


def file_hashes(*roots: Path) -> dict[Path, str]:
    """SHA-256 of every file under ``roots``."""
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def write(project: Path, name: str, text: str) -> str:
    path = project / name
    path.write_text(text)
    return str(path)


def edited(config: str, old: str, new: str) -> Callable[[Path], list[str]]:
    """A command line running ``config`` with one YAML edit (the user's typo)."""

    def args(project: Path) -> list[str]:
        text = (DIGITS / config).read_text()
        assert old in text, f"{old!r} not in {config}"
        return ["fit", "--config", write(project, "edited.yaml", text.replace(old, new, 1)), *SHORT]

    return args


def text_edited(config: str, *edits: tuple[str, str]) -> Callable[[Path], list[str]]:
    """A command line running ``configs/text/<config>`` with YAML edits; a short budget of one tiny epoch."""

    def args(project: Path) -> list[str]:
        text = (CONFIGS / "text" / config).read_text()
        for old, new in edits:
            assert old in text, f"{old!r} not in {config}"
            text = text.replace(old, new, 1)
        return ["fit", "--config", write(project, "edited.yaml", text), *SHORT]

    return args


def plain(*extra: str, config: str = "offline_kd.yaml") -> Callable[[Path], list[str]]:
    return lambda project: ["fit", "--config", str(DIGITS / config), *SHORT, *extra]


def with_data(mistake: str) -> Callable[[Path], list[str]]:
    """The main job with a user datamodule whose training data has ``mistake``."""

    def args(project: Path) -> list[str]:
        overlay = write(
            project, "data.yaml", f"data:\n  class_path: bad_data.BrokenDigits\n  init_args: {{mistake: {mistake}}}\n"
        )
        return ["fit", "--config", str(DIGITS / "offline_kd.yaml"), "--config", overlay, *SHORT]

    return args


def with_teacher_file(
    content: Callable[[Path], bytes], name: str = "teacher.safetensors"
) -> Callable[[Path], list[str]]:
    """The main job with ``teacher_weights`` pointing to a broken file made by ``content``."""

    def args(project: Path) -> list[str]:
        path = project / "checkpoints" / name
        path.write_bytes(content(project)) if not name.endswith("/") else path.mkdir()
        return plain(f"--model.init_args.teacher_weights={path}")(project)

    return args


def image_folder_without_val(project: Path) -> list[str]:
    """An ImageNet-style folder that has train/ but no val/ (the validation images not unpacked yet)."""
    from PIL import Image

    for name in ("cat", "dog"):
        (project / "images" / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(project / "images" / "train" / name / "0.png")
    overlay = "data:\n  class_path: kd_lightning.ImageFolderDataModule\n  init_args: {root: images, input_size: 32}\n"
    return ["fit", "--config", str(DIGITS / "baseline.yaml"), "--config", write(project, "data.yaml", overlay), *SHORT]


def cifar_recipe_without_its_teacher(project: Path) -> list[str]:
    """A CIFAR-100 recipe run before its teacher was trained, from a checkout (configs/ beside checkpoints/)."""
    shutil.copytree(CONFIGS, project / "configs")
    recipe = "configs/cifar100/resnet32x4_resnet8x4_kd.yaml"
    return ["fit", "--config", recipe, "--data=kd_lightning.SyntheticImageDataModule", *SHORT]


def earlier_run(config: str) -> Path:
    """The ``last.ckpt`` of a finished tiny run of ``config`` in the current project copy."""
    main(["fit", "--config", str(DIGITS / config), *SHORT])
    (path,) = Path.cwd().glob(f"runs/digits/{Path(config).stem}/lightning_logs/version_*/checkpoints/last.ckpt")
    return path


def resume_from(config: str, make: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    return lambda project: ["fit", "--config", str(DIGITS / config), *SHORT, f"--ckpt_path={make(project)}", *extra]


def truncated_checkpoint(project: Path) -> Path:
    path = earlier_run("offline_kd.yaml")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def pickled_module(project: Path) -> bytes:
    path = project / "pickled.pt"
    torch.save(DigitsCNN(width=32), path)
    return path.read_bytes()


@dataclass
class CliMistake:
    """A ``kd-lightning`` command line with a mistake, and words its message must contain (problem and fix).

    ``once``: a text the output must hold exactly once (the error is not printed twice); with it, the case also runs
    with ``--debug`` and must then show the traceback and still exit with the same code.
    """

    name: str
    args: Callable[[Path], list[str]]
    expect: tuple[str, ...]
    exit_code: int | None = None
    once: str | None = None


def config_edited(config: str, *replacements: tuple[str, str], name: str = "bad.yaml") -> str:
    """Copy ``configs/<config>`` into the working directory as ``name`` with each ``(old, new)`` replaced once."""
    text = (CONFIGS / config).read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    Path(name).write_text(text)
    return name


def offline_args(*replacements: tuple[str, str]) -> list[str]:
    return [
        "fit",
        "--config",
        config_edited("digits/offline_kd.yaml", *replacements),
        *TINY_FIT,
        "--trainer.logger=false",
    ]


def attention_args(*replacements: tuple[str, str]) -> list[str]:
    return ["fit", "--config", config_edited("digits/at.yaml", *replacements), *TINY_FIT, "--trainer.logger=false"]


BYOT_EXITS = (
    "    exits:\n      class_path: kd_lightning.BYOTExits\n      init_args:\n"
    "        layers: [layer1, layer2]\n        feature_layer: pool\n        alpha: 0.1\n        temperature: 3.0\n"
    "        hint_weight: 0.00013\n"
)


# ----------------------------------------------------------------- the Python API
SGD = functools.partial(torch.optim.SGD, lr=0.1)


def offline(**overrides):
    kwargs = dict(student=DigitsMLP(), teacher=DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS)
    return OfflineDistillation(**{**kwargs, **overrides})


def fit(module, record, datamodule=None, **trainer_args):
    record["trainer"] = trainer = fast_trainer(record["tmp"], **trainer_args)
    trainer.fit(module, datamodule=datamodule or DigitsDataModule(batch_size=32))


def offline_checkpoint(record) -> str:
    callback = ModelCheckpoint(dirpath=record["tmp"] / "ckpt", save_last=True)
    fast_trainer(record["tmp"], max_steps=1, enable_checkpointing=True, callbacks=[callback]).fit(
        offline(), datamodule=DigitsDataModule(batch_size=32)
    )
    return callback.last_model_path


@dataclass
class ApiMistake:
    """A Python call with a mistake, the exception it must raise and words of its message."""

    name: str
    run: Callable[[dict], object]
    error: type[Exception] | tuple[type[Exception], ...]
    expect: tuple[str, ...] = field(default_factory=tuple)


def error_block(stderr: str) -> list[str]:
    """The lines of the boundary's message, from ``kd-lightning: error:`` to the end."""
    lines = stderr.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("kd-lightning: error")]
    assert len(starts) == 1, f"expected the error printed once, got {len(starts)}:\n{stderr[-3000:]}"
    return lines[starts[0] :]
