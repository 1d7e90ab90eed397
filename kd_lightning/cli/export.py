"""The ``kd-lightning-export`` command: the deployable student of a checkpoint as safetensors, TorchScript and ONNX.

    kd-lightning-export runs/digits/offline_kd/lightning_logs/version_0/checkpoints/last.ckpt
    kd-lightning-export <a checkpoint of configs/digits/self_byot.yaml> --exit layer2 --formats onnx --output deploy/

The module that wrote the checkpoint is rebuilt (:mod:`kd_lightning.export.deploy`); its student — or, for layer-wise
self-distillation, the network cut at a BYOT exit — is written into ``--output`` (default: ``<checkpoint>_export/``
beside the checkpoint) as ``student.*`` (``exit_<layer>.*``), and every file is checked against PyTorch on a test
batch of the run's datamodule, or on random inputs of ``--input-shape`` (:mod:`kd_lightning.export.formats`). A
summary lists the files, their sizes and max abs differences. Existing files are replaced only with ``--overwrite``.

Errors are printed once, as one short block (:mod:`kd_lightning.cli.diagnose`): exit code 2 when the command is refused
before anything is written (arguments, the checkpoint, the inputs, files already there), 1 when an export fails (a
file that fails its check is never put in place), 130 after Ctrl-C. ``--debug`` or ``KD_LIGHTNING_DEBUG=1`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kd_lightning.callbacks.export import describe_existing
from kd_lightning.cli.diagnose import RUN_EXIT, USAGE_EXIT, debug_requested, error_boundary
from kd_lightning.core.networks import count_parameters
from kd_lightning.export import deploy
from kd_lightning.export.formats import FORMATS, ExportedFile, Log, export_network, export_paths
from kd_lightning.files import read_checkpoint
from kd_lightning.files.outputs import KindCheck, check_output, is_torchscript, reads_of, same_weights
from kd_lightning.models.shallow import check_input_shape
from kd_lightning.modules import DistillationModule
from kd_lightning.modules.exits import exit_key

COMMAND = "kd-lightning-export"
MIN_OPSET = 7


class UsageError(ValueError):
    """A command line that the parser rejects."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # raise instead of exiting: the boundary prints it once
        raise UsageError(f"{message}; see `{COMMAND} --help`")


def input_shape(text: str) -> tuple[int, ...]:
    """``"1,8,8"`` -> ``(1, 8, 8)``: the shape of one input sample, without the batch dimension."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected the shape of one input sample as positive integers without the batch dimension, e.g. 1,8,8, "
            f"but got {text!r}"
        )
    return shape


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``kd-lightning-export``."""
    parser = _Parser(
        prog=COMMAND,
        description="Write the deployable student of a kd_lightning checkpoint as safetensors, TorchScript and ONNX, "
        "each file checked against PyTorch.",
        epilog="--debug (or KD_LIGHTNING_DEBUG=1) adds the traceback to an error.",
        allow_abbrev=False,
    )
    parser.add_argument("checkpoint", help="a checkpoint written by `kd-lightning fit` (any module)")
    parser.add_argument("--output", metavar="DIR", help="folder of the files (default: <checkpoint>_export/ beside it)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), help="formats to write")
    parser.add_argument("--exit", metavar="LAYER", help="layer-wise self-distillation: export the network cut there")
    parser.add_argument(
        "--input-shape",
        type=input_shape,
        metavar="C,H,W",
        help="check on random inputs of this shape per sample (default: a test batch of the checkpoint's datamodule)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace files of an earlier export")
    return parser


@dataclass
class Plan:
    """What to export, checked before anything is written."""

    network: nn.Module
    description: str
    inputs: Tensor
    source: str
    folder: Path
    name: str
    replaced: list[str] = field(default_factory=list)


def plan_export(options: argparse.Namespace) -> Plan:
    """Rebuild the checkpoint's module, take the network to deploy and real inputs, and check the output folder."""
    if options.opset is not None and options.opset < MIN_OPSET:
        raise ValueError(f"expected --opset >= {MIN_OPSET} but got --opset {options.opset}; omit it for the default.")
    path = Path(options.checkpoint)
    checkpoint = read_checkpoint(path, what="checkpoint")
    module = deploy.load_module(path, checkpoint)
    student = deploy.deployable_network(module)
    if deploy.is_language_model(student):
        raise deploy.language_model_error(student, path, options.input_shape)
    if options.input_shape is not None:
        check_input_shape(student, options.input_shape, "--input-shape")
        shape = ",".join(map(str, options.input_shape))
        inputs, source = deploy.random_inputs(options.input_shape), f"random inputs (--input-shape {shape})"
    else:
        found = deploy.datamodule_inputs(checkpoint)
        if found is None:
            raise ValueError(
                f"checkpoint {str(path)!r} names no datamodule to draw real inputs from (it was saved from Python); "
                "pass the shape of one input sample, e.g. --input-shape 1,8,8 (random inputs of that shape)."
            )
        inputs, source = found
    deploy.check_inputs_fit(student, inputs, source)
    network = student if options.exit is None else deploy.deployable_network(module, options.exit, inputs)
    kind = type(student).__name__ + ("" if options.exit is None else f" cut at exit {options.exit}")
    description = f"{kind} (the student of {type(module).__name__}, {count_parameters(network):,} parameters)"
    folder = Path(options.output) if options.output else path.with_name(f"{path.stem}_export")
    name = "student" if options.exit is None else f"exit_{exit_key(options.exit)}"
    reads = reads_of([(path, "the checkpoint being exported"), *_run_files(checkpoint), *module.files_read().items()])
    kinds = {"safetensors": same_weights(network.state_dict()), "torchscript": is_torchscript}
    return Plan(network, description, inputs, source, folder, name, _replaced(folder, name, options, reads, kinds))


def _run_files(checkpoint: dict[str, Any]) -> list[tuple[str, str]]:
    """The teacher weights the checkpoint's run read (its ``teacher_weights``; the export rebuilds no teacher): a
    later run of the same config reads them again, so no export replaces them."""
    weights = (checkpoint.get("hyper_parameters") or {}).get("teacher_weights")
    paths = weights if isinstance(weights, (list, tuple)) else [weights]
    return [(str(file), "the teacher weights of the run that wrote the checkpoint") for file in paths if file]


def _replaced(
    folder: Path, name: str, options: argparse.Namespace, reads: dict[Path, str], kinds: dict[str, KindCheck]
) -> list[str]:
    """The files of the export that exist already; an error unless ``--overwrite``, and (even with it) for a file the
    checkpoint's run reads or a file of another kind or architecture (:mod:`kd_lightning.files.outputs`)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"expected --output to be a folder but {str(folder)!r} is a file; pass another --output.")
    what = "the exported network"
    for fmt, target in export_paths(folder, name, options.formats).items():
        check_output(target, what, "--output", reads, kinds.get(fmt) if target.exists() else None, setting="folder")
    existing = [
        f"{target.name} ({describe_existing(target)})"
        for target in export_paths(folder, name, options.formats).values()
        if target.exists()
    ]
    if existing and not options.overwrite:
        raise ValueError(
            f"refusing to replace the files of an earlier export in {str(folder)!r}: {', '.join(existing)}; pass "
            "--overwrite to replace them (each only once its new version passed its check), or choose another "
            "--output folder."
        )
    return existing


def export_module(
    module: DistillationModule,
    folder: str | Path,
    example_input: Tensor,
    exit: str | None = None,
    formats: Sequence[str] = FORMATS,
    opset: int | None = None,
    log: Log = print,
) -> list[ExportedFile]:
    """Export a module's student (or its network cut at BYOT exit ``exit``) from Python, e.g. a module loaded with
    ``load_from_checkpoint(path, student=...)``; the files are ``student.*`` (``exit_<layer>.*``) in ``folder``."""
    network = deploy.deployable_network(module, exit, example_input)
    name = "student" if exit is None else f"exit_{exit_key(exit)}"
    return export_network(network, folder, example_input, formats, name=name, opset=opset, log=log)


def summary(plan: Plan, files: Sequence[ExportedFile], checkpoint: str) -> str:
    """The lines printed after a successful export: the network, the inputs it was checked on, and every file."""
    width = max(len(file.path.name) for file in files)
    lines = [
        f"exported {plan.description}",
        f"  from {checkpoint}",
        f"  into {plan.folder}{'/' if not str(plan.folder).endswith('/') else ''}",
        f"  checked against PyTorch on {plan.source} {list(plan.inputs.shape)} and on a batch of 1:",
    ]
    for file in files:
        lines.append(
            f"    {file.path.name:<{width}}  {file.size / 1000:>8,.1f} kB  max abs diff {file.max_abs_diff:<9.3g} "
            f"({file.how})"
        )
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``kd-lightning-export`` console script, inside the commands' one error boundary."""
    args, debug = debug_requested(sys.argv[1:] if args is None else args)
    with error_boundary(args, debug, COMMAND, USAGE_EXIT):
        options = build_parser().parse_args(args)
        plan = plan_export(options)
    with error_boundary(args, debug, COMMAND, RUN_EXIT):
        for line in plan.replaced:
            print(f"replacing {plan.folder / line}")
        files = export_network(plan.network, plan.folder, plan.inputs, options.formats, plan.name, options.opset)
    print(summary(plan, files, options.checkpoint))


if __name__ == "__main__":
    main()
