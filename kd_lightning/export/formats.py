"""The deployable network as files: safetensors, TorchScript, ONNX and int8 TorchScript, each checked before it is put
in place.

Every writer writes a temporary file next to the target, loads it back the way a deployment would (the safetensors
into a fresh copy of the network, the TorchScript with ``torch.jit.load``, the ONNX with onnxruntime), compares its
outputs with the PyTorch network on the example batch and on a batch of one (the batch dimension is dynamic), and only
then renames it over the target (:func:`kd_lightning.files.atomic_write`): a file that fails its check never replaces
anything. TorchScript is compiled with ``torch.jit.script``, or traced on the example batch where scripting cannot
compile the network; ONNX comes from the ``torch.export``-based exporter, or the TorchScript-based one where
``torch.export`` cannot capture the network.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.networks import hookless_copy
from kd_lightning.export.deploy import logits_of
from kd_lightning.files import atomic_write, read_tensors

FORMATS = ("safetensors", "torchscript", "onnx")
SUFFIXES = {"safetensors": ".safetensors", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
TOLERANCE = {
    "safetensors": 1e-6,
    "torchscript": 1e-5,
    "onnx": 1e-4,
    "int8": 1e-5,
    "hf": 1e-5,
    "sentence-transformers": 1e-5,
}
"""Largest max abs difference to PyTorch a format may show, relative to the logits' scale (``max(1, max |logit|)``)."""
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
DYNAMO_MIN_OPSET = 18
"""The oldest opset the ``torch.export``-based ONNX exporter writes; older ones come from the TorchScript-based one."""
OPERATOR_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.]+)'"),  # the torch.export-based exporter: prims.zeta
    re.compile(r"operator '([\w:.]+)'"),  # the TorchScript-based one: aten::special_zeta
    re.compile(r"namespace ([\w:.]+)"),  # a custom operator: mylib::op
    re.compile(r"\b(\w+::\w+)"),
)
Log = Callable[[str], object]
Inputs = Tensor | Mapping[str, Tensor]
"""What a network is called on: one tensor ``[B, ...]`` (``network(x)``), or keyword tensors ``[B, L]``
(``network(**inputs)``: ``input_ids``, ``attention_mask``)."""


@dataclass
class ExportedFile:
    """One written file: its format, path, size in bytes, how it was made and its check's max abs difference."""

    format: str
    path: Path
    size: int
    max_abs_diff: float
    how: str


def export_paths(folder: str | Path, name: str, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """``{format: folder/<name><suffix>}``: ``student.safetensors``, ``student.torchscript.pt``, ``student.onnx``."""
    check_formats(formats)
    return {fmt: Path(folder) / f"{name}{SUFFIXES[fmt]}" for fmt in formats}


def check_formats(formats: Sequence[str]) -> None:
    """Raise unless ``formats`` is a non-empty list of :data:`FORMATS`."""
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if isinstance(formats, str) or not formats or unknown:
        raise ValueError(f"expected formats from {list(FORMATS)} but got {formats!r}; pass a list of them.")


def export_network(
    network: nn.Module,
    folder: str | Path,
    example_input: Tensor,
    formats: Sequence[str] = FORMATS,
    name: str = "student",
    opset: int | None = None,
    log: Log = print,
    metadata: Mapping[str, str] | None = None,
) -> list[ExportedFile]:
    """Write ``network`` (eval mode, CPU) into ``folder`` in every format of ``formats``, each file checked.

    Args:
        network: the network to deploy; it returns logits (or an object with ``.logits``, or a tuple).
        folder: where the files go (created); existing files of the same names are replaced, atomically.
        example_input: real inputs ``[B, ...]`` (B >= 2): traced and exported on, and checked on with a batch of one.
        formats: some of ``safetensors``, ``torchscript``, ``onnx``.
        name: the files' stem.
        opset: ONNX opset; ``None``: the exporter's default.
        log: where the fallbacks (TorchScript traced, the TorchScript-based ONNX exporter) are reported.
        metadata: ``metadata_props`` of the ONNX file (the preprocessing, :mod:`kd_lightning.export.preprocessing`).

    Raises:
        ValueError: a format cannot be written or its file does not reproduce the network; the message names the
            cause (an operator without ONNX translation, ...) and the formats that work.
    """
    paths = export_paths(folder, name, formats)
    if "onnx" in formats:
        require_onnx()
    network = hookless_copy(network).cpu().eval()  # the caller's network keeps its device, mode and feature taps
    example_input = example_input.cpu()
    if len(example_input) < 2:  # torch.export specialises a batch of one: the ONNX batch would not be dynamic
        example_input = torch.cat([example_input, example_input])
    writers = {"safetensors": write_safetensors, "torchscript": write_torchscript, "onnx": write_onnx}
    return [
        writers[fmt](network, paths[fmt], example_input, opset=opset, log=log, metadata=metadata) for fmt in formats
    ]


def write_safetensors(network: nn.Module, path: Path, example_input: Inputs, **_: object) -> ExportedFile:
    """The state dict as safetensors, checked by loading it (strict) into a zeroed copy of the network."""
    from safetensors.torch import save_file

    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in network.state_dict().items()}

    def reload(temporary: Path) -> Callable[[Tensor], Tensor]:
        fresh = copy.deepcopy(network)
        for value in fresh.state_dict().values():
            value.zero_()
        fresh.load_state_dict(read_tensors(temporary, what="exported weights"), strict=True)
        return fresh

    def write(temporary: Path) -> None:
        save_file(tensors, str(temporary))

    return _write_checked("safetensors", network, path, example_input, write, reload, "state dict, strict reload")


def write_torchscript(
    network: nn.Module, path: Path, example_input: Tensor, log: Log = print, **_: object
) -> ExportedFile:
    """TorchScript (``torch.jit.script``, else traced on the example batch), checked with ``torch.jit.load``."""
    compiled, how = to_torchscript(network, example_input, log)
    with _jit_deprecation_ignored():
        return _write_checked(
            "torchscript",
            network,
            path,
            example_input,
            lambda tmp: torch.jit.save(compiled, str(tmp)),
            lambda tmp: torch.jit.load(str(tmp), map_location="cpu").eval(),
            how,
        )


def to_torchscript(network: nn.Module, example_input: Tensor, log: Log = print) -> tuple[torch.jit.ScriptModule, str]:
    """``(compiled network, how)``: scripted, or traced on ``example_input`` when scripting cannot compile it."""
    with _jit_deprecation_ignored():
        try:
            return torch.jit.script(network), "torch.jit.script"
        except Exception as error:
            scripting = _first_line(error)
        try:
            traced = torch.jit.trace(network, example_input)
        except Exception as error:
            raise ValueError(
                f"cannot write {type(network).__name__} as TorchScript: torch.jit.script failed ({scripting}) and so "
                f"did torch.jit.trace ({_first_line(error)}); export the other formats (--formats safetensors onnx)."
            ) from error
    log(
        f"TorchScript: torch.jit.script cannot compile {type(network).__name__} ({scripting}); traced it on the "
        f"example batch instead (control flow that depends on the input is fixed to the example's path)."
    )
    return traced, "torch.jit.trace (script failed)"


def write_onnx(
    network: nn.Module,
    path: Path,
    example_input: Tensor,
    opset: int | None = None,
    log: Log = print,
    metadata: Mapping[str, str] | None = None,
    **_: object,
) -> ExportedFile:
    """ONNX with a dynamic batch dimension (at ``opset``, checked in the file, with ``metadata`` as its
    ``metadata_props``), checked with onnxruntime."""
    made: list[str] = []

    def write(temporary: Path) -> None:
        exporter = to_onnx(network, example_input, temporary, opset, log)
        if metadata:
            add_onnx_metadata(temporary, metadata)
        written = onnx_opset(temporary)
        if opset is not None and written != opset:
            raise ValueError(
                f"cannot export {type(network).__name__} to ONNX at opset {opset}: the exporter wrote opset {written} "
                f"instead (it cannot convert the graph to {opset}); pass another --opset, or omit it for the default."
            )
        made.append(f"{exporter}, opset {written}, checked with onnxruntime")

    file = _write_checked("onnx", network, path, example_input, write, _onnx_runner, "")
    file.how = made[0]
    return file


def add_onnx_metadata(path: Path, metadata: Mapping[str, str]) -> None:
    """Set ``metadata_props`` of the ONNX file at ``path`` (keys already there are replaced)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    kept = [entry for entry in model.metadata_props if entry.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=str(key), value=str(value))
    onnx.save(model, str(path))


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, as a dict."""
    import onnx

    return {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}


def onnx_opset(path: Path) -> int | None:
    """The default-domain opset an ONNX file imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def to_onnx(network: nn.Module, example_input: Tensor, path: Path, opset: int | None, log: Log = print) -> str:
    """Export to ``path`` (input ``input [batch, ...]``, output ``logits``); return which exporter made it.

    The ``torch.export``-based exporter first (opsets from :data:`DYNAMO_MIN_OPSET`); the TorchScript-based one for an
    older opset, or when ``torch.export`` cannot capture the network. An operator without an ONNX translation is an
    error naming it.
    """
    names = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset, "verbose": False}
    errors: list[BaseException] = []
    if opset is None or opset >= DYNAMO_MIN_OPSET:
        try:
            batch = torch.export.Dim("batch")
            dynamic = {"dynamic_shapes": ({0: batch},), "external_data": False}
            with _logger_quiet("onnxscript"):  # a failed opset conversion logs a traceback; the file's opset is checked
                torch.onnx.export(network, (example_input,), str(path), dynamo=True, **dynamic, **names)
            return "torch.export-based exporter"
        except Exception as error:
            if any(cls.__name__ == "ConversionError" for cls in type(error).__mro__):  # captured, not translatable
                raise onnx_failure(network, [error], opset) from error
            errors.append(error)
            log(
                f"ONNX: torch.export cannot capture {type(network).__name__} ({_first_line(error)}); trying the "
                "TorchScript-based exporter."
            )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
            dynamic = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}}
            torch.onnx.export(network, (example_input,), str(path), dynamo=False, **dynamic, **names)
    except Exception as error:
        raise onnx_failure(network, [*errors, error], opset) from error
    return "TorchScript-based exporter" + (" (torch.export failed)" if errors else "")


def onnx_failure(network: nn.Module, errors: Sequence[BaseException], opset: int | None) -> ValueError:
    """The error of a failed ONNX export: the operator without a translation when the exporters name one."""
    texts = [str(error) for error in errors]
    operator = next((m.group(1) for text in texts for p in OPERATOR_PATTERNS if (m := p.search(text))), None)
    at = f"opset {opset}" if opset is not None else "the exporter's default opset"
    fallback = (
        "export the other formats, which need no ONNX translation (--formats safetensors torchscript), or try a "
        "higher --opset"
    )
    if operator is not None:
        problem = f"the operator {operator} has no ONNX translation at {at}"
    else:
        problem = "; ".join(_first_line(error) for error in errors)
    return ValueError(f"cannot export {type(network).__name__} to ONNX: {problem}; {fallback}.")


def require_onnx() -> None:
    """Raise unless the packages ONNX export and its check need are installed."""
    import importlib.util

    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"ONNX export needs the packages {', '.join(ONNX_PACKAGES)} but these are not installed: "
            f"{', '.join(missing)}; pip install 'kd_lightning[export]', or export the other formats (--formats "
            "safetensors torchscript)."
        )


def _onnx_runner(path: Path) -> Callable[[Tensor], Tensor]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda inputs: torch.from_numpy(session.run(None, {name: inputs.numpy()})[0])


def _write_checked(
    fmt: str,
    network: nn.Module,
    path: Path,
    example_input: Inputs,
    write: Callable[[Path], object],
    load: Callable[[Path], Callable[..., object]],
    how: str,
    extra: Sequence[Inputs] = (),
) -> ExportedFile:
    """Write with ``write`` into a temporary file, check what ``load`` makes of it (on the example batch, its first
    sample and the ``extra`` batches), then put it at ``path``."""
    diffs: list[float] = []

    def write_and_check(temporary: Path) -> None:
        write(temporary)
        diffs.append(max_abs_diff(fmt, network, load(temporary), example_input, extra))

    atomic_write(path, write_and_check)
    return ExportedFile(fmt, path, path.stat().st_size, diffs[0], how)


def call(network: Callable[..., object], inputs: Inputs) -> Any:
    """``network(inputs)`` for a tensor, ``network(**inputs)`` for keyword tensors."""
    return network(**inputs) if isinstance(inputs, Mapping) else network(inputs)


def first_rows(inputs: Inputs, rows: int = 1) -> Inputs:
    """The first ``rows`` samples of a batch (of every keyword tensor)."""
    return {key: value[:rows] for key, value in inputs.items()} if isinstance(inputs, Mapping) else inputs[:rows]


def shape_of(inputs: Inputs) -> list[int]:
    """The shape of a batch (of its first keyword tensor)."""
    return list(next(iter(inputs.values())).shape if isinstance(inputs, Mapping) else inputs.shape)


def max_abs_diff(
    fmt: str, network: nn.Module, loaded: Callable[..., object], example_input: Inputs, extra: Sequence[Inputs] = ()
) -> float:
    """The largest ``|loaded - network|`` over the example batch, its first sample and the ``extra`` batches; raise
    above the tolerance."""
    worst = 0.0
    for inputs in (example_input, first_rows(example_input), *extra):
        with torch.no_grad():
            expected = logits_of(call(network, inputs))
            try:
                got = logits_of(call(loaded, inputs))
            except Exception as error:
                raise ValueError(
                    f"the exported {fmt} file does not run on inputs of shape {shape_of(inputs)} "
                    f"({type(error).__name__}: {_first_line(error)}); it was not written."
                ) from error
        if got is None or got.shape != expected.shape:
            shape = None if got is None else list(got.shape)
            raise ValueError(
                f"the exported {fmt} file gives outputs of shape {shape} on inputs {shape_of(inputs)} but the "
                f"network gives {list(expected.shape)}; it was not written."
            )
        diff = float((got.float() - expected.float()).abs().max()) if expected.numel() else 0.0
        limit = TOLERANCE[fmt] * max(1.0, float(expected.abs().max()) if expected.numel() else 1.0)
        if not diff <= limit:
            raise ValueError(
                f"the exported {fmt} file does not reproduce the network: its outputs differ by up to {diff:.3g} "
                f"(more than {limit:.3g}) on inputs {shape_of(inputs)}; it was not written."
            )
        worst = max(worst, diff)
    return worst


@contextlib.contextmanager
def _logger_quiet(name: str) -> Iterator[None]:
    """Only errors from the logger ``name`` inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _jit_deprecation_ignored() -> Iterator[None]:
    """Silence torch's "`torch.jit.*` is deprecated" warnings: TorchScript is one of the formats asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit\.\w+` is deprecated")
        yield


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return (text.splitlines() or [type(error).__name__])[0].rstrip(":")[:300]


def write_int8(network: nn.Module, path: Path, example_input: Tensor) -> ExportedFile:
    """A fake-quantized network (:func:`~kd_lightning.models.quantized.quantized_copy`) converted to int8 and written
    as TorchScript, checked by ``torch.jit.load`` against the converted network in PyTorch before it is put in place.

    The int8 network runs with the quantized engine of the copy's backend; outside kd_lightning, ``torch.jit.load``
    runs the file (``torch.backends.quantized.engine`` set to that backend on hosts with several).
    """
    from kd_lightning.models.quantized import convert_quantized, int8_runtime

    int8 = convert_quantized(network)
    example_input = example_input.cpu()
    with _jit_deprecation_ignored(), int8_runtime(network.backend):
        scripted = torch.jit.script(int8.eval())
        return _write_checked(
            "int8",
            int8,
            Path(path),
            example_input,
            lambda tmp: torch.jit.save(scripted, str(tmp)),
            lambda tmp: torch.jit.load(str(tmp), map_location="cpu").eval(),
            "int8 TorchScript (torch.ao eager conversion, scripted)",
        )
