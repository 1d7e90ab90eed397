"""What a deployment does to its inputs before the exported network sees them, written next to the exported files.

Every export writes ``<name>.preprocessing.json`` (``student.preprocessing.json``) beside its files, and the same in
the ONNX file's ``metadata_props``: for images the input shape and layout, the normalisation the datamodule applied
(``input = (raw * scale - mean) / std`` per channel: digits' pixels 0-16 with ``scale`` 1, CIFAR's 0-255 pixels with
``scale`` 1/255) and the class names when the datamodule knows them; for text the tokenizer (its files travel in the
Hugging Face folder), the longest sequence, the inputs ``input_ids``/``attention_mask`` and an encoder's pooling::

    info = json.loads(Path("student.preprocessing.json").read_text())
    mean, std = np.array(info["normalization"]["mean"]), np.array(info["normalization"]["std"])
    x = (raw * info["normalization"]["scale"] - mean[:, None, None]) / std[:, None, None]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kd_lightning.files import atomic_write

SUFFIX = ".preprocessing.json"
SCHEMA = "kd_lightning.preprocessing/1"
FORMULA = "input = (raw * scale - mean) / std, per channel (dimension 1 of [batch, channels, ...])"
METADATA_KEY = "kd_lightning.preprocessing"
"""The ONNX ``metadata_props`` key holding the whole preprocessing JSON (flat keys hold its main fields too)."""
IMAGE_SCALE = 1 / 255
"""The scale of datamodules whose ``mean``/``std`` are those of pixels in [0, 1] (CIFAR, image folders)."""


def preprocessing_path(folder: str | Path, name: str = "student") -> Path:
    """``folder/<name>.preprocessing.json``."""
    return Path(folder) / f"{name}{SUFFIX}"


def normalization_of(datamodule: Any) -> dict[str, Any] | None:
    """``{"mean", "std", "scale", "formula"}`` of a datamodule's input normalisation, ``None`` when it has none.

    Read from its ``normalization`` mapping (``mean``, ``std``, ``scale``; the digits datamodule's, known after
    ``setup``), else its ``mean``/``std`` attributes, which are those of pixels scaled to [0, 1] (``scale`` 1/255).
    """
    found = getattr(datamodule, "normalization", None)
    if isinstance(found, Mapping) and "mean" in found and "std" in found:
        mean, std, scale = found["mean"], found["std"], found.get("scale", 1.0)
    elif getattr(datamodule, "mean", None) is not None and getattr(datamodule, "std", None) is not None:
        mean, std, scale = datamodule.mean, datamodule.std, getattr(datamodule, "pixel_scale", IMAGE_SCALE)
    else:
        return None
    listed = [[float(v) for v in (values if isinstance(values, Sequence) else [values])] for values in (mean, std)]
    return {"mean": listed[0], "std": listed[1], "scale": float(scale), "formula": FORMULA}


def class_names_of(datamodule: Any) -> list[str] | None:
    """The datamodule's class names (``class_names`` or ``classes``), index order, when it knows them."""
    names = getattr(datamodule, "class_names", None) or getattr(datamodule, "classes", None)
    return [str(name) for name in names] if isinstance(names, Sequence) and not isinstance(names, str) else None


def image_preprocessing(datamodule: Any, sample_shape: Sequence[int], source: str) -> dict[str, Any]:
    """The preprocessing of a network called on one float tensor ``[B, *sample_shape]``.

    Args:
        datamodule: the run's datamodule (set up), or ``None`` (a checkpoint saved from Python, random inputs).
        sample_shape: the shape of one input sample (``[1, 8, 8]``).
        source: where the inputs the export was checked on came from, recorded as is.
    """
    shape = [int(size) for size in sample_shape]
    layout = {3: "NCHW", 2: "NCL", 1: "NC"}.get(len(shape))
    normalization = None if datamodule is None else normalization_of(datamodule)
    return {
        "schema": SCHEMA,
        "modality": "image" if len(shape) == 3 else "tensor",
        "input": {"name": "input", "shape": ["batch", *shape], "dtype": "float32", "layout": layout},
        "normalization": normalization,
        "classes": None if datamodule is None else class_names_of(datamodule),
        "output": {"name": "logits", "shape": ["batch", "num_classes"]},
        "datamodule": None if datamodule is None else type(datamodule).__name__,
        "checked_on": source,
        **({} if normalization else {"note": "the datamodule's normalisation is not known: feed what it fed"}),
    }


def text_preprocessing(
    tokenizer: str, max_length: int | None, output: str, pooling: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The preprocessing of a language model: tokenize with the run's tokenizer (its files are in the Hugging Face
    folder), feed ``input_ids`` and ``attention_mask`` ``[B, L]`` (int64), read ``output``; an encoder's sentence
    embedding is its ``pooling``."""
    return {
        "schema": SCHEMA,
        "modality": "text",
        "tokenizer": {"source": str(tokenizer), "files": "the tokenizer files of the Hugging Face folder"},
        "max_length": max_length,
        "input": {
            "names": ["input_ids", "attention_mask"],
            "shape": ["batch", "sequence"],
            "dtype": "int64",
        },
        "output": {"name": output, "shape": ["batch", "sequence", "vocab" if output == "logits" else "hidden"]},
        "pooling": dict(pooling) if pooling else None,
    }


def onnx_metadata(info: Mapping[str, Any]) -> dict[str, str]:
    """``metadata_props`` for an ONNX file: the whole preprocessing as JSON, and its main fields as flat keys."""
    metadata = {METADATA_KEY: json.dumps(info)}
    normalization = info.get("normalization") or {}
    for key in ("mean", "std", "scale"):
        if key in normalization:
            metadata[key] = json.dumps(normalization[key])
    if info.get("classes"):
        metadata["class_names"] = json.dumps(info["classes"])
    if "input" in info and "shape" in info["input"]:
        metadata["input_shape"] = json.dumps(info["input"]["shape"])
    if info.get("tokenizer"):
        metadata["tokenizer"] = str(info["tokenizer"]["source"])
    return metadata


def write_preprocessing(path: str | Path, info: Mapping[str, Any]) -> Path:
    """Write the preprocessing JSON atomically, checked by reading it back."""
    text = json.dumps(info, indent=2) + "\n"

    def write(temporary: Path) -> None:
        temporary.write_text(text, encoding="utf-8")
        if json.loads(temporary.read_text(encoding="utf-8")) != json.loads(text):
            raise ValueError(f"the preprocessing file {path} does not read back as written; it was not written.")

    return atomic_write(path, write)


def is_preprocessing(path: Path) -> str | None:
    """A kind check (:mod:`kd_lightning.files.outputs`): the existing file is a preprocessing JSON of an export."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return "is not a JSON preprocessing file"
    if isinstance(data, dict) and data.get("schema") == SCHEMA:
        return None
    return "is a JSON file but not a preprocessing file"
