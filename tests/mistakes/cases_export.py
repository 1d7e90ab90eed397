"""Mistakes in ``kd-lightning-export`` command lines: a language model's checkpoint exported as an image network, and
``--input-shape`` values that are not the ``C,H,W`` of one sample the student takes.

Each case runs the command's planning step (:func:`kd_lightning.cli.export.plan_export`, everything the command checks
before it writes) on a checkpoint of a tiny ``kd-lightning fit``; the command prints its error through the one error
boundary with exit code 2.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from unittest import mock

from helpers import CONFIGS, ROOT, TINY_FIT
from mistakes.catalogue import ApiMistake

from kd_lightning.cli import main as fit_main
from kd_lightning.cli.export import build_parser, plan_export

RUNS = {
    "gpt2": [
        "--config",
        str(CONFIGS / "text" / "gpt2_tiny_baseline.yaml"),
        f"--data.init_args.tokenizer={ROOT / 'checkpoints' / 'text' / 'python_help_bpe'}",
    ],
    "cnn": [
        "--config",
        str(CONFIGS / "digits" / "baseline.yaml"),
        "--model.init_args.network=kd_lightning.models.DigitsCNN",
        "--model.init_args.network.init_args.width=8",
    ],
}
"""The tiny runs whose checkpoints are exported: the GPT-2 baseline, and the digits baseline with a CNN student."""
_made: dict[str, Path] = {}


def checkpoint(name: str, record: dict) -> Path:
    """``last.ckpt`` of a tiny run of :data:`RUNS` ``[name]`` (made once per session, in the first case's folder)."""
    if name not in _made:
        folder = record["tmp"] / f"run_{name}"
        folder.mkdir()
        with contextlib.chdir(folder), mock.patch.object(sys, "argv", ["kd-lightning"]):
            fit_main(["fit", *RUNS[name], *TINY_FIT])
        _made[name] = next(folder.rglob("last.ckpt"))
    return _made[name]


def export(name: str, *options: str) -> object:
    """Plan ``kd-lightning-export <checkpoint of name> --output <tmp>/out <options>``."""

    def run(record: dict) -> object:
        path = checkpoint(name, record)
        return plan_export(build_parser().parse_args([str(path), "--output", str(record["tmp"] / "out"), *options]))

    return run


API_MISTAKES = [
    ApiMistake(
        "kd-lightning-export --input-shape of an image on a GPT-2 checkpoint",
        export("gpt2", "--input-shape", "1,8,8"),
        ValueError,
        ("is a language model (GPT2LMHeadModel)", "not random float inputs of --input-shape 1,8,8", "save_pretrained"),
    ),
    ApiMistake(
        "kd-lightning-export --formats torchscript of a GPT-2 checkpoint",
        export("gpt2", "--formats", "torchscript"),
        ValueError,
        ("TorchScript is not written for a language model (GPT2LMHeadModel)", "--formats safetensors hf"),
    ),
    ApiMistake(
        "kd-lightning-export --input-shape 8,8 for a CNN student",
        export("cnn", "--input-shape", "8,8"),
        ValueError,
        ("--input-shape: expected [channels, height, width]", "got 8,8", "without the channels", "--input-shape 1,8,8"),
    ),
    ApiMistake(
        "kd-lightning-export --input-shape of colour images for the 1-channel digits CNN",
        export("cnn", "--input-shape", "3,32,32"),
        ValueError,
        ("expected 1 channel first", "DigitsCNN starts with a 1-channel convolution", "--input-shape 1,32,32"),
    ),
]
