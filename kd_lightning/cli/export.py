"""The ``kd-lightning-export`` command: the deployable student of a checkpoint as safetensors, TorchScript and ONNX,
a language model also as a Hugging Face folder and a sentence-transformers folder; every export with its preprocessing.

    kd-lightning-export runs/digits/offline_kd/lightning_logs/version_0/checkpoints/last.ckpt
    kd-lightning-export <a checkpoint of configs/digits/self_byot.yaml> --exit layer2 --formats onnx --output deploy/
    kd-lightning-export <a checkpoint of configs/text/gpt2_tiny_kd.yaml> --formats hf onnx
    kd-lightning-export <a checkpoint of configs/text/minilm_l3.yaml> --formats hf sentence-transformers

The checkpoint given (a file, or a run folder holding one ``last.ckpt``) leads to the checkpoint exported: the best
checkpoint its ``ModelCheckpoint`` recorded (the one the distillation report describes), or the one given with
``--no-best`` or when it records none; the summary says which. The module that wrote it is rebuilt
(:mod:`kd_lightning.export.deploy`); its student — or, for layer-wise self-distillation, the network cut at a BYOT exit
— is written into ``--output`` (default: ``<checkpoint>_export/`` beside the checkpoint, ``export/`` in a run folder
given) as ``student.*`` (``exit_<layer>.*``), and every file is checked against PyTorch on a test batch of the run's
datamodule, or on random inputs of ``--input-shape`` (:mod:`kd_lightning.export.formats`; a language model on token
batches, :mod:`kd_lightning.export.text`). ``student.preprocessing.json`` (and the ONNX file's metadata) records what a
deployment does to its inputs first (:mod:`kd_lightning.export.preprocessing`). A summary lists the files, their sizes
and max abs differences. Existing files are replaced only with ``--overwrite``.

Errors are printed once, as one short block (:mod:`kd_lightning.cli.diagnose`): exit code 2 when the command is refused
before anything is written (arguments, the checkpoint, the inputs, files already there), 1 when an export fails (a
file that fails its check is never put in place), 130 after Ctrl-C. ``--debug`` or ``KD_LIGHTNING_DEBUG=1`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kd_lightning.callbacks.export import describe_existing
from kd_lightning.cli.diagnose import RUN_EXIT, USAGE_EXIT, debug_requested, error_boundary
from kd_lightning.core.networks import count_parameters
from kd_lightning.export import deploy
from kd_lightning.export.formats import FORMATS, ExportedFile, Log, export_network, export_paths
from kd_lightning.export.preprocessing import (
    image_preprocessing,
    is_preprocessing,
    onnx_metadata,
    preprocessing_path,
    text_preprocessing,
    write_preprocessing,
)
from kd_lightning.export.text import (
    FOLDER_FORMATS,
    TEXT_FORMATS,
    Pooling,
    TextExport,
    check_sentence_encoder,
    export_text,
    model_card,
    model_kind,
    pooling_of_folder,
    text_export_paths,
    token_inputs,
    tokenizer_directory,
)
from kd_lightning.files import read_checkpoint
from kd_lightning.files.local_dirs import local_directory
from kd_lightning.files.outputs import KindCheck, check_output, is_report, is_torchscript, reads_of, same_weights
from kd_lightning.models.shallow import check_input_shape
from kd_lightning.modules import DistillationModule
from kd_lightning.modules.exits import exit_key

COMMAND = "kd-lightning-export"
MIN_OPSET = 7
ALL_FORMATS = (*FORMATS, *(fmt for fmt in TEXT_FORMATS if fmt not in FORMATS))
TEXT_DEFAULT = ("safetensors", "hf", "onnx")
"""The formats of a language model when ``--formats`` is not given (and ``sentence-transformers`` for an encoder whose
pooling is known)."""


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
        description="Write the deployable student of a kd_lightning checkpoint as safetensors, TorchScript and ONNX "
        "(a language model: safetensors, a Hugging Face folder, a sentence-transformers folder and ONNX), each file "
        "checked against PyTorch, with its preprocessing.",
        epilog="--debug (or KD_LIGHTNING_DEBUG=1) adds the traceback to an error.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "checkpoint",
        help="a checkpoint written by `kd-lightning fit` (any module), or a run folder holding one last.ckpt; the best "
        "checkpoint it records is exported unless --no-best",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="folder of the files (default: <checkpoint>_export/ beside the checkpoint, export/ in a run folder)",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=ALL_FORMATS,
        help="formats to write (default: safetensors torchscript onnx; a language model: safetensors hf onnx, and "
        "sentence-transformers for an encoder whose pooling is known)",
    )
    parser.add_argument("--exit", metavar="LAYER", help="layer-wise self-distillation: export the network cut there")
    parser.add_argument(
        "--input-shape",
        type=input_shape,
        metavar="C,H,W",
        help="check on random inputs of this shape per sample (default: a test batch of the checkpoint's datamodule)",
    )
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--overwrite", action="store_true", help="replace files of an earlier export")
    parser.add_argument(
        "--no-best",
        action="store_true",
        help="export the checkpoint given, not the best checkpoint its ModelCheckpoint recorded",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="a language model: the run's tokenizer folder, when it is no longer where the checkpoint says",
    )
    parser.add_argument(
        "--pooling",
        metavar="MODE",
        help="an encoder's sentence embedding for sentence-transformers: mean, cls or max, +normalize to L2-normalise "
        "(default: the pooling of the run's tokenizer, student or teacher folder when it is a sentence-transformers "
        "folder)",
    )
    return parser


@dataclass
class Plan:
    """What to export, checked before anything is written."""

    network: nn.Module
    description: str
    inputs: Tensor | dict[str, Tensor]
    source: str
    folder: Path
    name: str
    replaced: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=lambda: list(FORMATS))
    checkpoint: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    text: TextExport | None = None


def plan_export(options: argparse.Namespace) -> Plan:
    """Rebuild the checkpoint's module, take the network to deploy and real inputs, and check the output folder."""
    if options.opset is not None and options.opset < MIN_OPSET:
        raise ValueError(f"expected --opset >= {MIN_OPSET} but got --opset {options.opset}; omit it for the default.")
    given = Path(options.checkpoint)
    path, checkpoint, taken = resolve_checkpoint(given, getattr(options, "no_best", False))
    module = deploy.load_module(path, checkpoint)
    student = deploy.deployable_network(module)
    default = given / "export" if given.is_dir() else given.with_name(f"{given.stem}_export")
    folder = Path(options.output) if options.output else default
    reads = reads_of(
        [
            (path, "the checkpoint being exported"),
            (checkpoint_file(given), "the checkpoint given"),
            *_run_files(checkpoint),
            *module.files_read().items(),
        ]
    )
    if deploy.is_language_model(student):
        return _plan_text(options, path, checkpoint, module, student, folder, reads, taken)
    text_only = [fmt for fmt in options.formats or () if fmt not in FORMATS]
    if text_only:
        raise ValueError(
            f"--formats {' '.join(text_only)} writes a folder of a transformers language model (from_pretrained, "
            f"sentence-transformers) but the student of {str(path)!r} is {type(student).__name__}, a network called "
            "on one float tensor; export it as --formats onnx safetensors (or torchscript)."
        )
    if options.input_shape is not None:
        check_input_shape(student, options.input_shape, "--input-shape")
        shape = ",".join(map(str, options.input_shape))
        inputs, source = deploy.random_inputs(options.input_shape), f"random inputs (--input-shape {shape})"
        datamodule = _datamodule_if_any(checkpoint)
    else:
        found = deploy.datamodule_batch(checkpoint)
        if found is None:
            raise ValueError(
                f"checkpoint {str(path)!r} names no datamodule to draw real inputs from (it was saved from Python); "
                "pass the shape of one input sample, e.g. --input-shape 1,8,8 (random inputs of that shape)."
            )
        datamodule, inputs, source = found
        inputs = deploy.one_tensor(inputs, type(datamodule).__name__)
    deploy.check_inputs_fit(student, inputs, source)
    network = student if options.exit is None else deploy.deployable_network(module, options.exit, inputs)
    kind = type(student).__name__ + ("" if options.exit is None else f" cut at exit {options.exit}")
    description = f"{kind} (the student of {type(module).__name__}, {count_parameters(network):,} parameters)"
    name = "student" if options.exit is None else f"exit_{exit_key(options.exit)}"
    formats = list(options.formats or FORMATS)
    targets = {**export_paths(folder, name, formats), "preprocessing": preprocessing_path(folder, name)}
    kinds = {
        "safetensors": same_weights(network.state_dict()),
        "torchscript": is_torchscript,
        "preprocessing": is_preprocessing,
    }
    replaced = _replaced(folder, targets, options, reads, kinds)
    info = image_preprocessing(datamodule, list(inputs.shape[1:]), source)
    return Plan(network, description, inputs, source, folder, name, replaced, formats, taken, info)


def _datamodule_if_any(checkpoint: Mapping[str, Any]) -> Any:
    """The checkpoint's datamodule, set up, for its normalisation; ``None`` when it cannot be rebuilt."""
    try:
        found = deploy.datamodule_batch(checkpoint)
    except ValueError:
        return None
    return None if found is None else found[0]


def resolve_checkpoint(given: Path, as_given: bool = False) -> tuple[Path, dict[str, Any], str]:
    """``(path, content, which)`` of the checkpoint to export: the best checkpoint that the ``ModelCheckpoint`` of
    ``given`` recorded (the one the distillation report describes) unless ``as_given``, else ``given`` itself.

    ``given`` may be a run folder holding exactly one ``last.ckpt``. ``which`` says, for the summary, which one was
    taken and why.
    """
    given = checkpoint_file(given)
    checkpoint = read_checkpoint(given, what="checkpoint")
    if as_given:
        return given, checkpoint, f"{given} (as given: --no-best)"
    best, score = best_checkpoint(checkpoint, given)
    if best is None:
        return given, checkpoint, f"{given} (it records no best checkpoint)"
    if not best.is_file():
        return given, checkpoint, f"{given} (the best checkpoint it records, {best}, is not there)"
    if best.resolve() == given.resolve():
        return given, checkpoint, f"{given} (the best checkpoint{score})"
    return (
        best,
        read_checkpoint(best, what="best checkpoint"),
        f"{best}, the best checkpoint{score} that {given.name} records (--no-best exports {given.name} itself)",
    )


def checkpoint_file(given: Path) -> Path:
    """``given``, or the one ``last.ckpt`` (else the one checkpoint) of the run folder ``given``."""
    if not given.is_dir():
        return given
    found = sorted(given.rglob("last.ckpt")) or sorted(given.rglob("*.ckpt"))
    if len(found) != 1:
        listed = ", ".join(str(path) for path in found[:5]) or "none"
        raise ValueError(
            f"expected a checkpoint file, or a run folder holding one last.ckpt, but {str(given)!r} holds "
            f"{len(found)} checkpoints ({listed}); pass one of them."
        )
    return found[0]


def best_checkpoint(checkpoint: Mapping[str, Any], given: Path) -> tuple[Path | None, str]:
    """The best checkpoint a checkpoint's ``ModelCheckpoint`` state records (as saved: relative to the folder the run
    started in, or found beside ``given``) and its score for the summary; ``(None, "")`` when it records none."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if not str(key).startswith("ModelCheckpoint") or not isinstance(state, Mapping):
            continue
        recorded = state.get("best_model_path")
        if not recorded:
            continue
        recorded = Path(recorded)
        candidates = [recorded, given.parent / recorded.name]
        path = next((candidate for candidate in candidates if candidate.is_file()), recorded)
        value, monitor = state.get("best_model_score"), state.get("monitor")
        score = f", {monitor} {float(value):.4g}" if monitor and value is not None else ""
        return path, score
    return None, ""


def _plan_text(
    options: argparse.Namespace,
    path: Path,
    checkpoint: Mapping[str, Any],
    module: DistillationModule,
    student: nn.Module,
    folder: Path,
    reads: dict[Path, str],
    taken: str,
) -> Plan:
    """The plan of a language model: its tokenizer, a token batch, the formats and the folders."""
    if options.input_shape is not None:
        raise deploy.language_model_error(student, path, options.input_shape)
    if options.exit is not None:
        raise ValueError(
            f"--exit cuts a layer-wise self-distilled image network at an exit, but the student of {str(path)!r} is a "
            f"language model ({type(student).__name__}); drop --exit."
        )
    if not callable(getattr(student, "save_pretrained", None)):
        raise ValueError(
            f"the student of {str(path)!r} ({type(student).__name__}) takes token ids but is not a transformers model, "
            "and kd-lightning-export writes language models as transformers models (hf, sentence-transformers, onnx, "
            "safetensors); keep its weights with the ExportWeights callback."
        )
    kind = model_kind(student)
    pooling = Pooling.parse(options.pooling) if options.pooling else None
    formats = list(options.formats or ())
    if "torchscript" in formats:
        raise ValueError(
            f"TorchScript is not written for a language model ({type(student).__name__}); export it as --formats "
            f"{' '.join(TEXT_FORMATS)}."
        )
    if "sentence-transformers" in formats and kind == "causal_lm":
        check_sentence_encoder(student, pooling)
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    spec, directory = tokenizer_directory(data.get("tokenizer"), options.tokenizer, path)
    from kd_lightning.data.corpus import load_tokenizer

    tokenizer = load_tokenizer(spec, field="--tokenizer" if options.tokenizer else "data.init_args.tokenizer")
    vocab = student.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ValueError(
            f"the tokenizer {spec!r} has {len(tokenizer):,} tokens but {type(student).__name__} embeds {vocab:,}: it "
            "is not the run's tokenizer; pass the tokenizer folder the run trained with as --tokenizer PATH."
        )
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    pooling = pooling or _known_pooling(directory, hparams)
    if not formats:
        formats = [*TEXT_DEFAULT, *(["sentence-transformers"] if kind != "causal_lm" and pooling else [])]
    if "sentence-transformers" in formats:
        check_sentence_encoder(student, pooling)
    found, source = None, "sample sentences (the checkpoint names no datamodule)"
    if data.get("_class_path"):
        try:
            found = deploy.datamodule_batch(checkpoint, {"tokenizer": spec} if options.tokenizer else None)
        except ValueError as error:  # the corpus is not here: the sentences are tokenized as the run tokenized
            source = f"sample sentences ({str(error).split(';')[0]})"
    max_length = data.get("max_length")
    inputs = token_inputs(tokenizer, found[1] if found else None, max_length)
    source = found[2] if found else source
    encoder = pooling if kind != "causal_lm" else None
    output = "logits" if kind != "base" else "last_hidden_state"
    info = text_preprocessing(spec, max_length, output, encoder.as_dict() if encoder else None)
    text = TextExport(spec, directory, tokenizer, max_length, encoder, "", info)
    text.card = model_card(student, hparams, _run_report(path), text, str(path), type(module).__name__)
    parameters = count_parameters(student)
    description = f"{type(student).__name__} (the student of {type(module).__name__}, {parameters:,} parameters)"
    targets = {**text_export_paths(folder, "student", formats), "preprocessing": preprocessing_path(folder, "student")}
    reads.update(reads_of([(directory, "the tokenizer folder of the run")]))
    kinds = {"safetensors": same_weights(student.state_dict()), "preprocessing": is_preprocessing}
    replaced = _replaced(folder, targets, options, reads, kinds)
    return Plan(student, description, inputs, source, folder, "student", replaced, formats, taken, info, text)


def _known_pooling(directory: Path, hparams: Mapping[str, Any]) -> Pooling | None:
    """The pooling of the run's tokenizer folder, or of a folder its student or teacher was built from, when one is a
    sentence-transformers folder (``modules.json``)."""
    found = pooling_of_folder(directory)
    for config in (hparams.get("student"), hparams.get("teacher")):
        arguments = config.get("init_args") if isinstance(config, Mapping) else None
        for value in (arguments or {}).values():
            if found is not None:
                return found
            if isinstance(value, str) and value:
                try:
                    found = pooling_of_folder(local_directory(value, "model"))
                except (OSError, ValueError):
                    continue
    return found


def _run_report(path: Path) -> dict[str, Any] | None:
    """The distillation report of the checkpoint's run (``report.json`` in its log directory, the folder above
    ``checkpoints/``), when there is one."""
    report = path.parent.parent / "report.json"
    if not report.is_file() or is_report(report) is not None:
        return None
    return json.loads(report.read_text())


def _run_files(checkpoint: dict[str, Any]) -> list[tuple[str, str]]:
    """The teacher weights the checkpoint's run read (its ``teacher_weights``; the export rebuilds no teacher): a
    later run of the same config reads them again, so no export replaces them."""
    weights = (checkpoint.get("hyper_parameters") or {}).get("teacher_weights")
    paths = weights if isinstance(weights, (list, tuple)) else [weights]
    return [(str(file), "the teacher weights of the run that wrote the checkpoint") for file in paths if file]


def _replaced(
    folder: Path,
    targets: Mapping[str, Path],
    options: argparse.Namespace,
    reads: dict[Path, str],
    kinds: Mapping[str, KindCheck],
) -> list[str]:
    """The files of the export that exist already; an error unless ``--overwrite``, and (even with it) for a file the
    checkpoint's run reads or a file of another kind or architecture (:mod:`kd_lightning.files.outputs`). A folder
    format (``hf``, ``sentence-transformers``) is checked through its ``config.json``; an existing folder must be one
    of an earlier export."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"expected --output to be a folder but {str(folder)!r} is a file; pass another --output.")
    what = "the exported network"
    for fmt, target in targets.items():
        if fmt in FOLDER_FORMATS:
            if target.exists() and not (target / "config.json").is_file():
                raise ValueError(
                    f"--output folder {str(folder)!r} holds {target.name}, which is not a folder of an earlier export "
                    "(no config.json): writing the export there would replace it; pass another --output."
                )
            check_output(target / "config.json", what, "--output", reads, None, setting="folder")
            continue
        check_output(target, what, "--output", reads, kinds.get(fmt) if target.exists() else None, setting="folder")
    existing = [f"{target.name} ({describe_existing(target)})" for target in targets.values() if target.exists()]
    if existing and not options.overwrite:
        raise ValueError(
            f"refusing to replace the files of an earlier export in {str(folder)!r}: {', '.join(existing)}; pass "
            "--overwrite to replace them (each only once its new version passed its check), or choose another "
            "--output folder."
        )
    return existing


def run_export(plan: Plan, opset: int | None = None, log: Log = print) -> list[ExportedFile]:
    """Write the plan's formats (each checked), then its preprocessing file."""
    metadata = onnx_metadata(plan.preprocessing)
    if plan.text is not None:
        files = export_text(
            plan.network, plan.folder, plan.inputs, plan.text, plan.formats, plan.name, opset, log, metadata
        )
    else:
        files = export_network(plan.network, plan.folder, plan.inputs, plan.formats, plan.name, opset, log, metadata)
    sidecar = write_preprocessing(preprocessing_path(plan.folder, plan.name), plan.preprocessing)
    return [*files, ExportedFile("preprocessing", sidecar, sidecar.stat().st_size, 0.0, "")]


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
    """The lines printed after a successful export: the checkpoint taken, the network, the inputs it was checked on,
    and every file."""
    width = max(len(file.path.name) + (1 if file.path.is_dir() else 0) for file in files)
    shape = list(plan.inputs.shape) if isinstance(plan.inputs, Tensor) else list(plan.inputs["input_ids"].shape)
    lines = [
        f"exported {plan.description}",
        f"  from {plan.checkpoint or checkpoint}",
        f"  into {plan.folder}{'/' if not str(plan.folder).endswith('/') else ''}",
        f"  checked against PyTorch on {plan.source} {shape} and on a batch of 1:",
    ]
    for file in files:
        name = file.path.name + ("/" if file.path.is_dir() else "")
        if file.format == "preprocessing":
            lines.append(f"    {name:<{width}}  {file.size / 1000:>8,.1f} kB  (the inputs' preprocessing)")
            continue
        lines.append(
            f"    {name:<{width}}  {file.size / 1000:>8,.1f} kB  max abs diff {file.max_abs_diff:<9.3g} ({file.how})"
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
        files = run_export(plan, options.opset)
    print(summary(plan, files, options.checkpoint))


if __name__ == "__main__":
    main()
