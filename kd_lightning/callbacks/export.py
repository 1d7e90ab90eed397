"""Export the deployable network (the module's ``student``) at the end of fit: ``ExportWeights`` writes its state
dict, ``ExportStudent`` writes it as safetensors, TorchScript and ONNX (a language model: safetensors, a Hugging Face
folder, a sentence-transformers folder and ONNX), each file checked, with its preprocessing (the files of
``kd-lightning-export``), ``ConvertQuantized`` writes a quantization-aware student as int8 TorchScript. All three
take one decision whether the fit's weights may be written (:meth:`TrainedWeightsExport.checked_weights`).

Nothing is exported after a fit that made no optimizer step, was interrupted, or whose weights are not finite: the
previous files stay as they were. Files are written atomically (:func:`kd_lightning.files.atomic_write`), and
replacing an existing one is logged with its size and date.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor

from kd_lightning.callbacks.outputs import PlannedOutput, check_run_outputs
from kd_lightning.core.batch import parse_parts
from kd_lightning.core.networks import hookless_copy
from kd_lightning.export.deploy import is_language_model
from kd_lightning.export.formats import FORMATS, export_network, export_paths, write_int8
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
)
from kd_lightning.files import atomic_write, read_checkpoint
from kd_lightning.files.local_dirs import local_directory
from kd_lightning.files.outputs import is_torchscript, same_weights
from kd_lightning.files.weights import first_nonfinite
from kd_lightning.models.quantized import QuantizedNetwork

STUDENT_PREFIX = "student."
TEXT_DEFAULT = ("safetensors", "hf", "onnx")
"""The formats of a language model when ``formats`` is not set (and ``sentence-transformers`` for an encoder whose
pooling is known)."""


def save_state_dict(state_dict: Mapping[str, Tensor], path: str | Path) -> Path:
    """Save a state dict atomically as ``.safetensors`` or, for any other suffix, with ``torch.save``.

    Tied weights (a language model's output layer sharing its word embeddings) are stored once per key: safetensors
    refuses tensors that share memory, so every repeat is written as its own copy (strict loading fills both keys).
    """
    path = Path(path)
    tensors, storages = {}, set()
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        tensors[key] = value.clone() if storage in storages else value
        storages.add(storage)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        return atomic_write(path, lambda temporary: save_file(tensors, str(temporary)))
    return atomic_write(path, lambda temporary: torch.save(tensors, temporary))


def describe_existing(path: str | Path) -> str | None:
    """``'414.0 kB, modified 2025-01-31 12:00:03'`` for an existing file, ``None`` when there is none."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return f"{info.st_size / 1000:,.1f} kB, modified {datetime.fromtimestamp(info.st_mtime):%Y-%m-%d %H:%M:%S}"


def weight_sums(module: torch.nn.Module) -> list[float]:
    """Sum and absolute sum of every floating-point parameter: changes with any optimizer step that moved a weight."""
    sums = [
        torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
        for p in module.parameters()
        if p.is_floating_point()
    ]
    return torch.cat(sums).tolist() if sums else []


class TrainedWeightsExport(L.Callback):
    """Base of the end-of-fit exports: the checks that the fit's student weights are newly trained and finite.

    :meth:`checked_weights` gives the state dict to export (the best checkpoint's, or the final weights) or the
    reason not to export: the fit made no optimizer step, was interrupted, ran as a ``fast_dev_run``, did not change
    the weights, or left a NaN/inf in them.

    Args:
        best: export the best checkpoint of the ``ModelCheckpoint`` callback, if it saved one, else the final weights.
    """

    def __init__(self, best: bool = True) -> None:
        self.best = best
        self.start_step: int | None = None
        self.start_sums: list[float] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step, self.start_sums = None, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step  # after a resume restored the step count
        self.start_sums = weight_sums(pl_module.student)

    def checked_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict[str, Tensor] | None, str]:
        """``(state dict, where it comes from)`` to export, or ``(None, why not)``."""
        reason = self.reason_not_to_export(trainer)
        if reason is None and self.start_sums == weight_sums(pl_module.student):
            reason = (
                f"expected the fit to change the weights but they are those it started with, after "
                f"{trainer.global_step - (self.start_step or 0)} optimizer step(s) (were they all skipped, e.g. by "
                "on_nonfinite='skip', or were the gradients zero?), so the weights are not newly trained"
            )
        if reason is not None:
            return None, reason
        state_dict, source = self.weights(trainer, pl_module)
        bad = first_nonfinite(state_dict)
        if bad is not None:
            return None, (
                f"expected finite weights but {bad} in the {source}: the run diverged (lower the learning rate, or "
                "check the inputs and losses)"
            )
        return state_dict, source

    def reason_not_to_export(self, trainer: L.Trainer) -> str | None:
        """Why this fit's weights must not be exported (no optimizer step, interrupted, smoke test), else ``None``."""
        if trainer.interrupted or trainer.state.status not in (TrainerStatus.RUNNING, TrainerStatus.FINISHED):
            return f"expected a fit that finished but it ended as {trainer.state.status.value}"
        if getattr(trainer, "received_sigterm", False):
            return "expected a fit that finished but it received SIGTERM"
        if trainer.fast_dev_run:
            return "expected a real fit but got a fast_dev_run smoke test (run without --trainer.fast_dev_run)"
        steps = trainer.global_step - (self.start_step if self.start_step is not None else trainer.global_step)
        if trainer.global_step == 0 or steps <= 0:
            return (
                f"expected the fit to make at least one optimizer step but it made none (global_step "
                f"{trainer.global_step}; max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}, "
                f"limit_train_batches={trainer.limit_train_batches}), so the weights are not newly trained"
            )
        return None

    def weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict[str, Tensor], str]:
        """The state dict to export and where it comes from (the best checkpoint's file, or ``"final weights"``)."""
        checkpoint = trainer.checkpoint_callback
        best_path = getattr(checkpoint, "best_model_path", "") if self.best else ""
        if not best_path:
            return dict(pl_module.student.state_dict()), "final weights"
        saved = read_checkpoint(best_path, what="best checkpoint")["state_dict"]
        state_dict = {k[len(STUDENT_PREFIX) :]: v for k, v in saved.items() if k.startswith(STUDENT_PREFIX)}
        return state_dict, best_path


class ExportWeights(TrainedWeightsExport):
    """Save ``pl_module.student`` (the network a Classifier trained, or the distilled student) when fit ends.

    The file is a plain state dict (no Lightning, no optimizer state): small, and loadable as ``teacher_weights``.
    Nothing is written (a warning says why) when the fit made no optimizer step, was interrupted, or ran as a
    ``fast_dev_run`` smoke test, or when a weight is NaN/inf: whatever was at ``path`` stays as it was. Replacing an
    existing file is logged (``replacing <path> (<size>, modified <time>)``); files are written atomically.

    Args:
        path: ``.safetensors`` or ``.pt`` file to write, e.g. in the run's directory.
        best: export the best checkpoint of the ``ModelCheckpoint`` callback, if it saved one, else the final weights.
        copy_to: also write the same weights here (e.g. ``checkpoints/digits_teacher.safetensors``, where the
            distillation configs read the teacher), only when set: ``None`` (default) leaves such a file alone.
    """

    def __init__(self, path: str, best: bool = True, copy_to: str | None = None) -> None:
        if copy_to is not None and os.path.abspath(copy_to) == os.path.abspath(path):
            raise ValueError(
                f"expected copy_to to be a second file but got copy_to={copy_to!r}, the same as path={path!r}; "
                "set copy_to to null or to another path."
            )
        super().__init__(best)
        self.path = path
        self.copy_to = copy_to

    def planned_outputs(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[PlannedOutput]:
        """``path`` (and ``copy_to``): the student's state dict (an existing file must hold the same architecture)."""
        kind = same_weights(pl_module.student.state_dict())
        what = f"the trained {type(pl_module.student).__name__}'s weights"
        targets = [
            (self.path, "ExportWeights.path"),
            *([(self.copy_to, "ExportWeights.copy_to")] if self.copy_to else []),
        ]
        return [(target, what, where, kind) for target, where in targets]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before the first step: the outputs must not replace anything good (:mod:`kd_lightning.files.outputs`)."""
        if stage == "fit":
            check_run_outputs(self, trainer, pl_module)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        targets = [self.path, *([self.copy_to] if self.copy_to else [])]
        state_dict, source = self.checked_weights(trainer, pl_module)
        if state_dict is None:
            left = " and ".join(targets)
            rank_zero_warn(
                f"ExportWeights: not exporting to {left}: {source}; an existing file there is left as it was."
            )
            return
        for target in targets:
            existing = describe_existing(target)
            if existing is not None:
                rank_zero_info(f"ExportWeights: replacing {target} ({existing})")
            save_state_dict(state_dict, target)
            rank_zero_info(f"saved {type(pl_module.student).__name__} weights ({source}) to {target}")


class ExportStudent(TrainedWeightsExport):
    """Write ``pl_module.student`` as safetensors, TorchScript and ONNX when fit ends, as ``kd-lightning-export`` does.

    The files (``student.safetensors``, ``student.torchscript.pt``, ``student.onnx`` in ``dirpath``) come from
    :func:`kd_lightning.export.formats.export_network`: each is loaded back (ONNX with onnxruntime) and checked against
    the PyTorch student on the first training batch and on a batch of one before it is put in place; the summary
    (sizes, max abs differences) is logged. A language model is written by :func:`kd_lightning.export.text.export_text`:
    ``student.safetensors``, a Hugging Face folder ``student_hf/`` (with the tokenizer of the fit's datamodule and a
    model card), ``student.onnx`` (``input_ids``/``attention_mask``, dynamic batch and sequence) and, for an encoder
    with a known pooling, ``student_sentence_transformers/``. ``student.preprocessing.json`` (also in the ONNX file's
    metadata) records the input normalisation and shape, the class names, or the tokenizer. Nothing is written after a
    fit that made no optimizer step, failed, or left non-finite weights (a warning says why). Replacing files of an
    earlier export is logged.

    Args:
        dirpath: folder of the files; ``None``: ``<trainer.log_dir>/export``.
        formats: some of ``safetensors``, ``torchscript``, ``onnx`` (ONNX needs ``pip install 'kd_lightning[export]'``);
            for a language model some of ``safetensors``, ``hf``, ``sentence-transformers``, ``onnx``. ``None``:
            ``safetensors``, ``torchscript``, ``onnx`` (a language model: ``safetensors``, ``hf``, ``onnx``, and
            ``sentence-transformers`` for an encoder whose pooling is known).
        best: export the best checkpoint of the ``ModelCheckpoint`` callback, if it saved one, else the final weights.
        opset: ONNX opset; ``None``: the exporter's default.
        tokenizer: a language model: the tokenizer folder (``None``: the datamodule's ``tokenizer``).
        pooling: an encoder's sentence embedding (``mean``, ``cls``, ``max``, ``+normalize``; ``None``: the pooling of
            the tokenizer folder when it is a sentence-transformers folder).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        formats: Sequence[str] | None = None,
        best: bool = True,
        opset: int | None = None,
        tokenizer: str | None = None,
        pooling: str | None = None,
    ) -> None:
        known = [*FORMATS, *(fmt for fmt in TEXT_FORMATS if fmt not in FORMATS)]
        if formats is not None and (isinstance(formats, str) or not formats or set(formats) - set(known)):
            raise ValueError(f"expected formats from {known} but got {formats!r}; pass a list of them.")
        super().__init__(best)
        self.dirpath, self.opset = dirpath, opset
        self.formats = None if formats is None else list(formats)
        self.tokenizer, self.pooling = tokenizer, None if pooling is None else Pooling.parse(pooling)
        self.text: TextExport | None = None

    def folder(self, trainer: L.Trainer) -> Path:
        """Where the files go: ``dirpath``, else ``<trainer.log_dir>/export``."""
        return Path(self.dirpath if self.dirpath is not None else os.path.join(trainer.log_dir or ".", "export"))

    def formats_for(self, pl_module: L.LightningModule) -> list[str]:
        """The formats written for this module's student (the defaults depend on whether it is a language model)."""
        student = pl_module.student
        if not is_language_model(student):
            formats = list(self.formats or FORMATS)
            text_only = [fmt for fmt in formats if fmt not in FORMATS]
            if text_only:
                raise ValueError(
                    f"ExportStudent: formats {text_only} write folders of a transformers language model but the "
                    f"student is {type(student).__name__}, a network called on one float tensor; set ExportStudent."
                    "formats to some of [safetensors, onnx, torchscript]."
                )
            return formats
        if self.formats is not None:
            if "torchscript" in self.formats:
                raise ValueError(
                    f"ExportStudent: TorchScript is not written for a language model ({type(student).__name__}); set "
                    f"ExportStudent.formats to some of {list(TEXT_FORMATS)}."
                )
            return list(self.formats)
        encoder = model_kind(student) != "causal_lm" and self.text is not None and self.text.pooling is not None
        return [*TEXT_DEFAULT, *(["sentence-transformers"] if encoder else [])]

    def paths(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Path]:
        """``{format: path}`` of the export, and ``preprocessing``: the preprocessing file."""
        folder, formats = self.folder(trainer), self.formats_for(pl_module)
        if is_language_model(pl_module.student):
            paths = text_export_paths(folder, "student", formats)
        else:
            paths = export_paths(folder, "student", formats)
        return {**paths, "preprocessing": preprocessing_path(folder, "student")}

    def planned_outputs(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[PlannedOutput]:
        """``student.<format>`` in :meth:`folder` (a folder format through its ``config.json``) and the preprocessing
        file; an existing safetensors file must hold the same architecture."""
        kinds = {
            "safetensors": same_weights(pl_module.student.state_dict()),
            "torchscript": is_torchscript,
            "preprocessing": is_preprocessing,
        }
        what = f"the exported {type(pl_module.student).__name__}"
        planned = []
        for fmt, path in self.paths(trainer, pl_module).items():
            if fmt in FOLDER_FORMATS:
                if path.exists() and not (path / "config.json").is_file():
                    raise ValueError(
                        f"ExportStudent ({fmt}): {path} exists and is not a folder of an earlier export (no "
                        "config.json): writing the export there would replace it; set ExportStudent.dirpath to "
                        "another folder."
                    )
                path = path / "config.json"
            planned.append((path, what, f"ExportStudent ({fmt})", kinds.get(fmt)))
        return planned

    def files_read(self) -> dict[str, str]:
        """The tokenizer folder a language model's Hugging Face folder copies (no export may be written inside it)."""
        text = getattr(self, "text", None)
        return {} if text is None else {str(text.tokenizer_dir): "the tokenizer folder the export copies"}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before the first step: a language model's tokenizer and pooling, the outputs must not replace anything
        good, and an image student must take the inputs the TorchScript and ONNX formats are checked on (one tensor
        ``[B, ...]``)."""
        if stage != "fit":
            return
        if is_language_model(pl_module.student):
            self.text = self.text_export(trainer, pl_module)
            if "sentence-transformers" in self.formats_for(pl_module):
                check_sentence_encoder(pl_module.student, self.text.pooling if self.text else self.pooling)
        check_run_outputs(self, trainer, pl_module)
        if is_language_model(pl_module.student):
            return
        if set(self.formats_for(pl_module)) - {"safetensors"} and training_loader(trainer, pl_module) is not None:
            example_inputs(trainer, pl_module)  # dict batches of a non-transformers network: refused here

    def text_export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> TextExport | None:
        """The tokenizer (``tokenizer``, else the datamodule's), pooling and preprocessing of a language model;
        ``None`` when neither names a tokenizer and no format needs one."""
        from kd_lightning.data.corpus import load_tokenizer

        datamodule = trainer.datamodule
        hparams = dict(getattr(datamodule, "hparams", None) or {})
        spec = self.tokenizer or hparams.get("tokenizer")
        if spec is None:
            if not set(self.formats or TEXT_DEFAULT) & {"hf", "sentence-transformers"}:
                return None
            raise ValueError(
                "ExportStudent: a Hugging Face folder carries the tokenizer of the fit, but its datamodule names no "
                "tokenizer folder; set ExportStudent.tokenizer to it, or formats: [safetensors, onnx]."
            )
        field = "ExportStudent.tokenizer" if self.tokenizer else "data.init_args.tokenizer"
        directory = local_directory(str(spec), "tokenizer", field=field)
        tokenizer = getattr(datamodule, "tokenizer", None) if self.tokenizer is None else None
        tokenizer = tokenizer or load_tokenizer(str(spec), field=field)
        student = pl_module.student
        pooling = self.pooling or pooling_of_folder(directory)
        encoder = pooling if model_kind(student) != "causal_lm" else None
        max_length = hparams.get("max_length")
        output = "logits" if model_kind(student) != "base" else "last_hidden_state"
        info = text_preprocessing(spec, max_length, output, encoder.as_dict() if encoder else None)
        return TextExport(str(spec), directory, tokenizer, max_length, encoder, "", info)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = self.folder(trainer)
        state_dict, source = self.checked_weights(trainer, pl_module)
        if state_dict is None:
            rank_zero_warn(
                f"ExportStudent: not exporting to {folder}: {source}; existing files there are left as they were."
            )
            return
        network = hookless_copy(pl_module.student).cpu().eval()
        network.load_state_dict(state_dict, strict=True)
        paths = self.paths(trainer, pl_module)
        for target in paths.values():
            existing = describe_existing(target)
            if existing is not None:
                rank_zero_info(f"ExportStudent: replacing {target} ({existing})")
        formats = self.formats_for(pl_module)
        if is_language_model(network):
            info = self.text.preprocessing if self.text is not None else text_preprocessing("unknown", None, "logits")
            files = self.export_language_model(trainer, pl_module, network, folder, formats, source, info)
        else:
            inputs = example_inputs(trainer, pl_module)
            info = image_preprocessing(trainer.datamodule, list(inputs.shape[1:]), "the first training batch")
            files = export_network(
                network, folder, inputs, formats, opset=self.opset, log=rank_zero_info, metadata=onnx_metadata(info)
            )
        sidecar = write_preprocessing(paths["preprocessing"], info)
        for file in files:
            rank_zero_info(
                f"ExportStudent: saved {type(network).__name__} ({source}) to {file.path} ({file.size / 1000:,.1f} "
                f"kB, max abs diff {file.max_abs_diff:.3g}: {file.how})"
            )
        rank_zero_info(f"ExportStudent: saved the inputs' preprocessing to {sidecar}")

    def export_language_model(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        network: torch.nn.Module,
        folder: Path,
        formats: list[str],
        source: str,
        info: dict[str, Any],
    ) -> list:
        """Write a language model's formats, checked on the inputs of the fit's first training batch."""
        loader = training_loader(trainer, pl_module)
        loader = next(iter(loader.values())) if isinstance(loader, Mapping) else loader
        inputs = next(iter(parse_parts(next(iter(loader))).values())).inputs
        text = self.text
        if text is None:  # safetensors and onnx need no tokenizer
            text = TextExport("unknown", Path("."), None, None, None, "", info)
        teacher = getattr(pl_module, "teacher", None)
        networks = teacher.networks() if callable(getattr(teacher, "networks", None)) else {}
        teacher_network = next(iter(networks.values()), None)
        text.card = model_card(
            network, dict(pl_module.hparams), None, text, source, type(pl_module).__name__, teacher_network
        )
        return export_text(
            network,
            folder,
            {key: value.detach().cpu() for key, value in inputs.items()},
            text,
            formats,
            opset=self.opset,
            log=rank_zero_info,
            metadata=onnx_metadata(info),
        )


def training_loader(trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
    """The fit's training loader: the kd_lightning module's, the datamodule's, or the one the fit runs on."""
    if callable(getattr(pl_module, "training_dataloader", None)):
        return pl_module.training_dataloader()
    if trainer.datamodule is not None:
        return trainer.datamodule.train_dataloader()
    return trainer.train_dataloader


def example_inputs(trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
    """The inputs of the fit's first training batch, on the CPU: what the exported files are checked on."""
    loader = training_loader(trainer, pl_module)
    loader = next(iter(loader.values())) if isinstance(loader, Mapping) else loader
    inputs = next(iter(parse_parts(next(iter(loader))).values())).inputs
    if not isinstance(inputs, Tensor):
        raise ValueError(
            f"ExportStudent: expected training batches whose inputs are one tensor [B, ...] but got "
            f"{type(inputs).__name__} (keyword inputs: {sorted(inputs)}); the TorchScript and ONNX files are checked "
            f"on one input tensor: set ExportStudent.formats: [safetensors], or use ExportWeights for the state dict."
        )
    return inputs.detach().cpu().float()


class ConvertQuantized(TrainedWeightsExport):
    """Convert the fake-quantized student to int8 when the fit ends and save it as TorchScript at ``path``.

    The student must be built by :func:`~kd_lightning.models.quantized.quantized_copy` (checked in ``setup``, before
    any training). The int8 network is one more format of the export (:func:`kd_lightning.export.formats.write_int8`):
    written to a temporary file, reloaded with ``torch.jit.load`` and checked against the converted network before it
    is put in place. Nothing is written (a warning says why) after a fit that made no optimizer step, was interrupted,
    ran as a ``fast_dev_run``, did not change the weights, or left NaN/inf in them::

        callbacks:
          - class_path: kd_lightning.ConvertQuantized
            init_args: {path: runs/digits/qad/student_int8.pt}

    Args:
        path: the TorchScript file to write (e.g. ``runs/digits/qad/student_int8.pt``).
        best: convert the best checkpoint of the ``ModelCheckpoint`` callback, if it saved one, else the final student.
    """

    def __init__(self, path: str, best: bool = True) -> None:
        super().__init__(best)
        self.path = path
        self.size: int | None = None

    def planned_outputs(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[PlannedOutput]:
        """``path``: the int8 TorchScript file (an existing file must be a TorchScript archive)."""
        return [(self.path, "the int8 student", "ConvertQuantized.path", is_torchscript)]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before the first step: a fake-quantized student, and an output that replaces nothing good."""
        if stage != "fit":
            return
        student = getattr(pl_module, "student", None)
        if not isinstance(student, QuantizedNetwork):
            raise ValueError(
                f"ConvertQuantized: expected a fake-quantized student built by kd_lightning.models.quantized."
                f"quantized_copy but got {type(student).__name__}; build the student with class_path: "
                f"kd_lightning.models.quantized.quantized_copy, or remove the callback."
            )
        check_run_outputs(self, trainer, pl_module)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state_dict, source = self.checked_weights(trainer, pl_module)
        if state_dict is None:
            rank_zero_warn(f"ConvertQuantized: not writing {self.path}: {source}; an existing file is left as it was.")
            return
        student = hookless_copy(pl_module.student).cpu().eval()
        student.load_state_dict(state_dict, strict=True)
        written = write_int8(student, Path(self.path), example_inputs(trainer, pl_module))
        self.size = written.size
        rank_zero_info(
            f"ConvertQuantized: wrote the int8 student ({source}) to {self.path} ({self.size / 1000:.1f} kB, max abs "
            f"diff {written.max_abs_diff:.3g} against the int8 network in PyTorch)"
        )
