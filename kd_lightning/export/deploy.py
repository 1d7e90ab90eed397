"""The deployable network of a checkpoint: the module that wrote it, rebuilt, its student (or a BYOT exit as a
stand-alone network), and real inputs to check exports against.

A checkpoint written by ``kd-lightning fit`` records its module class (:mod:`kd_lightning.modules._checkpoints`) and the
whole config as hyperparameters, so :func:`load_module` rebuilds it with no other argument; the datamodule's
hyperparameters are saved too, so :func:`datamodule_inputs` draws a real test batch. A frozen offline teacher is not
re-read (it is not deployed): its file need not exist where the checkpoint is exported.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.networks import hookless_copy
from kd_lightning.files import CheckpointFileError, read_checkpoint
from kd_lightning.modules import DistillationModule
from kd_lightning.modules._checkpoints import saved_class_name
from kd_lightning.modules.deployable import key_of

RANDOM_BATCH = 8
"""Samples of the random batch drawn for ``input_shape`` when the checkpoint names no datamodule."""
TEACHER_CHANGED = r"the teacher's weights \(teacher_weights="
"""Start of the warning a distillation module gives when loaded beside another teacher (here: none, on purpose)."""
RESAVE = (
    "or train it through the CLI (`kd-lightning fit --config <config>`), whose checkpoints hold the whole config and "
    "rebuild with no arguments"
)


def load_module(path: str | Path, checkpoint: Mapping[str, Any] | None = None) -> DistillationModule:
    """Rebuild the kd_lightning module that wrote the checkpoint at ``path``, on the CPU, in eval mode.

    Args:
        path: a checkpoint of ``kd-lightning fit`` (any module: Classifier, offline, online, self-distillation).
        checkpoint: the file's content, when already read with :func:`~kd_lightning.files.read_checkpoint`.

    Raises:
        CheckpointFileError: the file is missing or bad (the message names the fault).
        ValueError: it was not written by a kd_lightning module, or the module cannot be rebuilt from it (saved from
            Python without its networks, a class that no longer imports, other networks than the weights).
    """
    checkpoint = read_checkpoint(path, what="checkpoint") if checkpoint is None else checkpoint
    cls = module_class(path, checkpoint)
    hparams = checkpoint.get("hyper_parameters") or {}
    missing = [name for name in required_arguments(cls) if name not in hparams]
    if missing:
        given = ", ".join(f"{name}=..." for name in missing)
        raise ValueError(
            f"cannot rebuild {cls.__name__} from checkpoint {str(path)!r}: its hyperparameters hold no "
            f"{', '.join(missing)} (a module built in Python keeps its networks out of the checkpoint); rebuild it in "
            f"Python, `module = {cls.__name__}.load_from_checkpoint(path, {given})`, and export that with "
            f"kd_lightning.cli.export.export_module(module, folder, example_input), {RESAVE}."
        )
    overrides = {"teacher_weights": None} if "teacher_weights" in hparams else {}  # the teacher is not exported
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=TEACHER_CHANGED)
            module = cls.load_from_checkpoint(path, map_location="cpu", **overrides)
    except CheckpointFileError:
        raise
    except Exception as error:
        detail = (str(error).strip().splitlines() or [""])[0][:300]
        raise ValueError(
            f"cannot rebuild {cls.__name__} from checkpoint {str(path)!r} ({type(error).__name__}: {detail}); export "
            f"with the code and config the run was trained with, {RESAVE}."
        ) from error
    return module.eval()


def module_class(path: str | Path, checkpoint: Mapping[str, Any]) -> type[DistillationModule]:
    """The :class:`~kd_lightning.modules.DistillationModule` subclass that wrote ``checkpoint``, imported."""
    name = saved_class_name(checkpoint)
    if name is None:
        raise ValueError(
            f"expected a checkpoint of a kd_lightning module but {str(path)!r} records no module class (neither "
            "checkpoint['kd_lightning']['module_class'] nor a '_class_path' hyperparameter): it was written by another "
            "LightningModule; export a checkpoint of `kd-lightning fit` (runs/<name>/lightning_logs/version_<n>/"
            "checkpoints/), or export its network from Python with kd_lightning.export.formats.export_network."
        )
    try:
        cls = imported(name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"cannot rebuild checkpoint {str(path)!r}: it was written by {name}, which does not import here "
            f"({type(error).__name__}: {error}); run the export where that class is importable (its project folder, "
            f"or add it to PYTHONPATH)."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, DistillationModule)):
        raise ValueError(
            f"expected a checkpoint of a kd_lightning module but {str(path)!r} was written by {name}, which is not a "
            "kd_lightning DistillationModule; export a checkpoint of `kd-lightning fit`, or export its network from "
            "Python with kd_lightning.export.formats.export_network."
        )
    return cls


def imported(path: str) -> Any:
    """The object at a dotted path ``package.module.Name`` (``ImportError``/``AttributeError`` if there is none)."""
    module, _, attribute = path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def required_arguments(cls: type) -> list[str]:
    """The ``__init__`` parameters of ``cls`` without a default (the networks: ``student``, ``teacher``, ``peers``)."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    positional = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in parameters if p.default is inspect.Parameter.empty and p.kind not in positional]


def deployable_network(
    module: DistillationModule, exit: str | None = None, example_input: Tensor | None = None
) -> nn.Module:
    """A stand-alone copy of what ``module`` deploys, on the CPU in eval mode, without the module's feature taps.

    Args:
        module: any kd_lightning module (its ``student``: the distilled student, the online cohort's ``student`` peer,
            the self-distilled network).
        exit: layer-wise self-distillation only: the BYOT exit (``layer2``) whose truncated network to take, one of
            the module's :meth:`~kd_lightning.modules.DistillationModule.deployables` of role ``exit``.
        example_input: inputs ``[B, ...]`` the truncated exit network is checked on against the full one.
    """
    if exit is None:
        return hookless_copy(module.student).cpu().eval()
    if example_input is None:
        raise ValueError(f"expected example inputs [B, ...] to check the network cut at exit {exit!r} on but got None.")
    exits = {row.name.removeprefix("exit "): row for row in module.deployables(example_input) if row.role == "exit"}
    if not exits:
        raise ValueError(
            f"expected a module with BYOT exits for exit={exit!r} but {type(module).__name__} has none (exits exist "
            "only in layer-wise self-distillation, LayerwiseSelfDistillation with exits: BYOTExits); export its "
            "student without --exit."
        )
    layers = list(exits)
    if exit not in exits:
        by_key = {key_of(layer): layer for layer in layers}
        nearest = by_key.get(exit) or next(iter(difflib.get_close_matches(exit, layers, n=1)), None)
        hint = f" (did you mean {nearest!r}?)" if nearest else ""
        raise ValueError(
            f"expected exit to be one of the exits of this {type(module).__name__}, {layers}, but got {exit!r}{hint}; "
            f"pass one of them, e.g. --exit {layers[-1]}."
        )
    return exits[exit].network.cpu().eval()


def datamodule_inputs(checkpoint: Mapping[str, Any]) -> tuple[Tensor, str] | None:
    """A test batch's inputs from the datamodule the checkpoint's run used, and where it came from.

    ``None`` when the checkpoint names no datamodule (saved from Python). The datamodule is rebuilt from its saved
    hyperparameters (:func:`datamodule_batch`).

    Raises:
        ValueError: the datamodule names a class that does not import, or gives no tensor batch (its data is not
            there, its inputs are not one tensor); the message says to pass an input shape instead.
    """
    found = datamodule_batch(checkpoint)
    if found is None:
        return None
    datamodule, inputs, source = found
    return one_tensor(inputs, type(datamodule).__name__), source


def one_tensor(inputs: Any, datamodule: str) -> Tensor:
    """A batch's inputs as one float tensor ``[B, ...]``, or the error of a datamodule whose inputs are not one."""
    if not isinstance(inputs, Tensor):
        raise ValueError(
            f"expected the inputs of {datamodule}'s batches to be one tensor [B, ...] but got "
            f"{type(inputs).__name__}; every export is checked by calling the network on one tensor: pass the shape "
            "of one sample it takes as one tensor, e.g. --input-shape 3,224,224 (random inputs of that shape)."
        )
    return inputs.float() if not inputs.is_floating_point() else inputs


def datamodule_batch(
    checkpoint: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> tuple[Any, Tensor | dict[str, Tensor], str] | None:
    """``(datamodule, inputs of its first test batch, where they came from)`` of the checkpoint's run.

    ``None`` when the checkpoint names no datamodule (saved from Python). The datamodule is rebuilt from its saved
    hyperparameters (with ``overrides``, e.g. another ``tokenizer`` folder), in the main process
    (``num_workers=0``), and its ``predict_dataloader`` (every kd_lightning datamodule's: the test split) gives the
    first batch; the datamodule is returned set up, so its normalisation is known.

    Raises:
        ValueError: the datamodule names a class that does not import, or gives no batch.
    """
    hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    path = hparams.get("_class_path")
    if not path:
        return None
    arguments = {key: value for key, value in hparams.items() if not key.startswith("_")}
    arguments.update(overrides or {})
    if "num_workers" in arguments:
        arguments["num_workers"] = 0
    fix = "pass the shape of one input sample instead, e.g. --input-shape 1,8,8 (random inputs of that shape)"
    try:
        cls = imported(path)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot rebuild the checkpoint's datamodule {path} ({error}); {fix}.") from None
    try:
        datamodule = cls(**arguments)
        datamodule.setup("predict")
        batch = next(iter(datamodule.predict_dataloader()))
    except Exception as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"cannot draw a batch from the checkpoint's datamodule {cls.__name__} ({type(error).__name__}: {detail}); "
            f"{fix}."
        ) from error
    return datamodule, Batch.parse(batch).inputs, f"a test batch of {cls.__name__}"


def random_inputs(shape: Sequence[int], batch_size: int = RANDOM_BATCH) -> Tensor:
    """Seeded standard-normal inputs ``[batch_size, *shape]`` (the same every call)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch_size, *shape), generator=generator)


def is_language_model(network: nn.Module) -> bool:
    """Whether ``network`` takes token ids (a Hugging Face model, or a network whose first layer is an embedding)."""
    if callable(getattr(network, "get_input_embeddings", None)):
        return True
    first = next((m for m in network.modules() if not list(m.children()) and any(True for _ in m.parameters())), None)
    return isinstance(first, nn.Embedding)


def language_model_error(network: nn.Module, path: str | Path, input_shape: Sequence[int] | None) -> ValueError:
    """The error of exporting a language model on random float inputs: what it takes, and what to pass instead."""
    shape = ",".join(map(str, input_shape or ()))
    return ValueError(
        f"the student of {str(path)!r} is a language model ({type(network).__name__}): it takes token ids (input_ids "
        f"[B, L] with an attention_mask), not random float inputs of --input-shape {shape} (an image shape); drop "
        "--input-shape: its exports are checked on the tokens of the run's datamodule and written as a Hugging Face "
        "folder (--formats hf, as save_pretrained writes it, with the tokenizer), ONNX and safetensors."
    )


def check_inputs_fit(network: nn.Module, inputs: Tensor, source: str) -> Tensor:
    """Run ``network`` on ``inputs``; return its logits, or raise when the inputs do not fit it.

    Raises:
        ValueError: naming the shape, the network and its error, and how to give the right shape.
    """
    try:
        with torch.no_grad():
            output = network(inputs)
    except Exception as error:
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"the network {type(network).__name__} does not accept {source}, inputs of shape {list(inputs.shape)} "
            f"({type(error).__name__}: {detail}); pass --input-shape with the shape of one sample it was trained on, "
            "without the batch dimension, e.g. 1,8,8 (C,H,W) for the digits networks."
        ) from None
    logits = logits_of(output)
    if logits is None:
        raise ValueError(
            f"expected the network {type(network).__name__} to return logits (a tensor, an object with .logits, or a "
            f"tuple whose first item is logits) but got {type(output).__name__}."
        )
    return logits


def logits_of(output: Any) -> Tensor | None:
    """The logits of a network's output: the tensor itself, ``output.logits``, the ``last_hidden_state`` of an encoder
    without a head, or the first item of a tuple."""
    if isinstance(output, Tensor):
        return output
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    if isinstance(getattr(output, "last_hidden_state", None), Tensor):
        return output.last_hidden_state
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None
