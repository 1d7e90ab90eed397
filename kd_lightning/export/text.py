"""Language models as files: a Hugging Face folder, a sentence-transformers folder, ONNX and safetensors, each checked.

A text student is a ``transformers`` model called on ``input_ids`` and ``attention_mask`` ``[B, L]``. Its exports:

* ``hf``: ``<name>_hf/`` with ``config.json``, ``model.safetensors``, the run's tokenizer files (copied from the
  tokenizer folder the run's datamodule read), ``README.md`` (a model card: parameters, the recipe, the teacher, the
  distillation report's numbers) and ``preprocessing.json``. Checked by ``AutoModelForCausalLM`` /
  ``AutoModelForMaskedLM`` / ``AutoModel.from_pretrained(folder)`` (the same class, logits equal to the network's on
  real batches at two sequence lengths and on a batch of one), ``AutoTokenizer.from_pretrained(folder)`` (the same ids
  as the run's tokenizer) and, for a causal LM, greedy ``generate`` (the same tokens).
* ``sentence-transformers``: ``<name>_sentence_transformers/``, an encoder with its :class:`Pooling` (mean over the
  attention mask, CLS or max, optionally L2-normalised), checked by ``SentenceTransformer(folder)``: its embeddings of
  token batches and of sentences equal the network's pooled last hidden states.
* ``onnx``: ``<name>.onnx`` with inputs ``input_ids``/``attention_mask`` (int64) and dynamic ``batch`` and
  ``sequence`` axes, output ``logits`` (``last_hidden_state`` for an encoder without a head), checked with onnxruntime
  at two sequence lengths and on a batch of one.
* ``safetensors``: ``<name>.safetensors``, the state dict, checked by a strict reload.

Folders are written into a temporary folder next to the target, checked there, then renamed into place: a folder that
fails its check never replaces anything.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.networks import count_parameters, hookless_copy
from kd_lightning.core.taps import mean_pool
from kd_lightning.export.formats import (
    DYNAMO_MIN_OPSET,
    ExportedFile,
    Log,
    _logger_quiet,
    _write_checked,
    add_onnx_metadata,
    max_abs_diff,
    onnx_failure,
    onnx_opset,
    require_onnx,
    write_safetensors,
)
from kd_lightning.export.preprocessing import write_preprocessing
from kd_lightning.files.local_dirs import TOKENIZER_FILES, LocalDirectoryError, local_directory

TEXT_FORMATS = ("safetensors", "hf", "sentence-transformers", "onnx")
"""The formats of a language model (TorchScript is not written for them)."""
FOLDER_FORMATS = {"hf": "_hf", "sentence-transformers": "_sentence_transformers"}
"""Formats written as folders, and the suffix of the folder's name after the export's name (``student_hf``)."""
TEXT_SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx"}
POOLING_MODES = ("mean", "cls", "max")
ST_POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
}
"""The keys of sentence-transformers' ``Pooling`` config that turn each mode on."""
SAMPLE_TEXTS = (
    "Knowledge distillation trains a small student to match a large teacher.",
    "The quick brown fox jumps over the lazy dog.",
    "Return a new sorted list from the items in iterable.",
    "Hello",
)
"""Sentences to check on when the checkpoint names no datamodule (and to check tokenizers and ``encode`` on)."""
GENERATED_TOKENS = 4


@dataclass(frozen=True)
class Pooling:
    """How an encoder's last hidden states ``[B, L, H]`` become one sentence embedding ``[B, H]``.

    Args:
        mode: ``mean`` (over the real tokens of the attention mask), ``cls`` (the first token) or ``max`` (over the
            real tokens), as sentence-transformers' ``Pooling``.
        normalize: L2-normalise the embedding (sentence-transformers' ``Normalize``), as all-MiniLM-L6-v2 does.

    Example:
        >>> Pooling.parse("mean+normalize")
        Pooling(mode='mean', normalize=True)
    """

    mode: str = "mean"
    normalize: bool = False

    @classmethod
    def parse(cls, text: str) -> Pooling:
        """``"mean"``, ``"cls"``, ``"max"``, each optionally ``+normalize``."""
        mode, _, extra = str(text).strip().partition("+")
        if mode not in POOLING_MODES or extra not in ("", "normalize"):
            choices = ", ".join([*POOLING_MODES, *(f"{m}+normalize" for m in POOLING_MODES)])
            raise ValueError(f"expected a pooling among {choices} but got {text!r}.")
        return cls(mode, extra == "normalize")

    def __str__(self) -> str:
        return self.mode + ("+normalize" if self.normalize else "")

    def __call__(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, L, H]`` hidden states and ``[B, L]`` mask -> ``[B, H]`` embeddings."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "cls":
            pooled = hidden[:, 0]
        elif self.mode == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        else:
            pooled = mean_pool(hidden, attention_mask).to(hidden.dtype)
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    def as_dict(self) -> dict[str, Any]:
        """``{"mode", "normalize"}`` for the preprocessing file."""
        return {"mode": self.mode, "normalize": self.normalize, "over": "the real tokens of attention_mask"}


def pooling_of_folder(directory: str | Path) -> Pooling | None:
    """The pooling of a sentence-transformers folder (``modules.json`` with a ``Pooling`` module, and ``Normalize``
    if it has one), ``None`` when the folder is not one."""
    directory = Path(directory)
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pooling, normalize = None, False
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            try:
                config = json.loads((directory / module.get("path", "") / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            pooling = next((mode for mode in POOLING_MODES if config.get(ST_POOLING_KEYS[mode])), None)
        normalize = normalize or kind.endswith(".Normalize")
    return None if pooling is None else Pooling(pooling, normalize)


def model_kind(network: nn.Module) -> str:
    """``causal_lm``, ``masked_lm`` or ``base`` (an encoder without a head) for a ``transformers`` model."""
    name = type(network).__name__
    if name.endswith(("LMHeadModel", "ForCausalLM")):
        return "causal_lm"
    if name.endswith("ForMaskedLM"):
        return "masked_lm"
    return "base"


def auto_model_class(kind: str) -> Any:
    """The ``transformers`` Auto class that reloads a model of ``kind``."""
    import transformers

    return {
        "causal_lm": transformers.AutoModelForCausalLM,
        "masked_lm": transformers.AutoModelForMaskedLM,
    }.get(kind, transformers.AutoModel)


def text_export_paths(folder: str | Path, name: str, formats: Sequence[str]) -> dict[str, Path]:
    """``{format: path}``: ``<name>.safetensors``, ``<name>.onnx``, folders ``<name>_hf/``,
    ``<name>_sentence_transformers/``."""
    unknown = [fmt for fmt in formats if fmt not in TEXT_FORMATS]
    if isinstance(formats, str) or not formats or unknown:
        raise ValueError(
            f"expected formats of a language model from {list(TEXT_FORMATS)} but got {list(formats)!r} (TorchScript "
            "is not written for language models); pass some of them, e.g. --formats hf onnx."
        )
    folder = Path(folder)
    return {
        fmt: folder / (f"{name}{FOLDER_FORMATS[fmt]}" if fmt in FOLDER_FORMATS else f"{name}{TEXT_SUFFIXES[fmt]}")
        for fmt in formats
    }


def tokenizer_directory(recorded: str | None, given: str | None, checkpoint: str | Path) -> tuple[str, Path]:
    """``(spec, directory)`` of the tokenizer to export: ``given`` (``--tokenizer``), else the one the checkpoint's
    datamodule recorded; a clear error when it is not there."""
    if given is not None:
        return str(given), local_directory(given, "tokenizer", field="--tokenizer")
    if not recorded:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} records no tokenizer folder (it names no TextDataModule: saved from "
            "Python?), and a Hugging Face folder carries the run's tokenizer; pass its folder with --tokenizer PATH."
        )
    try:
        return str(recorded), local_directory(recorded, "tokenizer", field="data.init_args.tokenizer")
    except LocalDirectoryError as error:
        raise ValueError(
            f"the tokenizer folder the run of {str(checkpoint)!r} read, {str(recorded)!r} (its data.init_args."
            f"tokenizer), is not there (moved or deleted?; {str(error).rstrip('.')}); pass the folder where that "
            f"tokenizer is now with --tokenizer PATH."
        ) from None


@dataclass
class TextExport:
    """What the text formats need besides the network.

    Args:
        tokenizer_spec: the tokenizer as the run named it (a path or ``package:<module>/<folder>``).
        tokenizer_dir: that folder; its tokenizer files are copied into the Hugging Face folder.
        tokenizer: the tokenizer loaded from it.
        max_length: the longest sequence the run fed (the datamodule's ``max_length``), or ``None``.
        pooling: an encoder's sentence embedding, for the sentence-transformers folder.
        card: the model card (``README.md``) of the folders.
        preprocessing: the preprocessing JSON (:func:`kd_lightning.export.preprocessing.text_preprocessing`).
    """

    tokenizer_spec: str
    tokenizer_dir: Path
    tokenizer: Any
    max_length: int | None = None
    pooling: Pooling | None = None
    card: str = ""
    preprocessing: dict[str, Any] = field(default_factory=dict)


def token_inputs(tokenizer: Any, inputs: Mapping[str, Tensor] | None, max_length: int | None) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` (int64, ``[B, L]``, at most 8 rows) of a batch, or of
    :data:`SAMPLE_TEXTS` tokenized when there is none; at least 2 rows and 4 positions (two sequence lengths)."""
    if inputs is None or "input_ids" not in inputs:
        encoded = tokenizer(list(SAMPLE_TEXTS), padding=True, truncation=max_length is not None, max_length=max_length)
        inputs = {key: torch.tensor(encoded[key]) for key in ("input_ids", "attention_mask")}
    ids = inputs["input_ids"][:8].long().cpu()
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask[:8].long().cpu()
    if len(ids) < 2:
        ids, mask = torch.cat([ids, ids]), torch.cat([mask, mask])
    if ids.shape[1] < 4:
        raise ValueError(f"expected token batches of at least 4 positions to check on but got {list(ids.shape)}.")
    return {"input_ids": ids, "attention_mask": mask}


def shorter(inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The batch cut to about half its sequence length (a second length the dynamic axes must take)."""
    length = max(2, inputs["input_ids"].shape[1] // 2 + 1)
    return {key: value[:, :length] for key, value in inputs.items()}


def sample_texts(tokenizer: Any, inputs: Mapping[str, Tensor]) -> list[str]:
    """A few sentences to check tokenizers and ``encode`` on: the batch decoded, and :data:`SAMPLE_TEXTS`."""
    decoded = tokenizer.batch_decode(inputs["input_ids"][:3], skip_special_tokens=True)
    return [text.strip()[:200] for text in decoded if text.strip()] + list(SAMPLE_TEXTS)


def last_hidden_state(network: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
    """The last hidden states ``[B, L, H]`` of a ``transformers`` encoder (with or without its head)."""
    output = network(**inputs, output_hidden_states=True)
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if isinstance(hidden, Tensor) else output.hidden_states[-1]


# ----------------------------------------------------------------- the formats
def export_text(
    network: nn.Module,
    folder: str | Path,
    inputs: Mapping[str, Tensor],
    spec: TextExport,
    formats: Sequence[str] = ("safetensors", "hf", "onnx"),
    name: str = "student",
    opset: int | None = None,
    log: Log = print,
    metadata: Mapping[str, str] | None = None,
) -> list[ExportedFile]:
    """Write a language model into ``folder`` in every format of ``formats`` (:data:`TEXT_FORMATS`), each checked.

    Args:
        network: a ``transformers`` model (eval mode, CPU, is made of a copy).
        folder: where the files and folders go (created).
        inputs: a real batch (``input_ids``, ``attention_mask``), as :func:`token_inputs` gives.
        spec: the tokenizer, pooling, model card and preprocessing.
        formats: some of :data:`TEXT_FORMATS`.
        name: the stem of the files and folders.
        opset: ONNX opset; ``None``: the exporter's default.
        log: where the ONNX exporter's fallback is reported.
        metadata: the ONNX file's ``metadata_props``.
    """
    paths = text_export_paths(folder, name, formats)
    if "onnx" in formats:
        require_onnx()
    if "sentence-transformers" in formats:
        check_sentence_encoder(network, spec.pooling)
    network = hookless_copy(network).cpu().eval()
    inputs = token_inputs(spec.tokenizer, inputs, spec.max_length)
    writers: dict[str, Callable[..., ExportedFile]] = {
        "safetensors": lambda path: write_safetensors(network, path, inputs),
        "hf": lambda path: write_hf(network, path, inputs, spec),
        "sentence-transformers": lambda path: write_sentence_transformers(network, path, inputs, spec),
        "onnx": lambda path: write_text_onnx(network, path, inputs, opset, log, metadata),
    }
    return [writers[fmt](paths[fmt]) for fmt in formats]


def check_sentence_encoder(network: nn.Module, pooling: Pooling | None) -> None:
    """Raise unless ``network`` is an encoder and a pooling is chosen (what a sentence-transformers folder needs)."""
    if model_kind(network) == "causal_lm":
        raise ValueError(
            f"a sentence-transformers folder holds an encoder but {type(network).__name__} is a causal language model "
            "(it predicts the next token; its hidden states see only the tokens before them); export it as "
            "--formats hf onnx safetensors."
        )
    if pooling is None:
        raise ValueError(
            f"a sentence-transformers folder needs the pooling that turns {type(network).__name__}'s hidden states "
            "into one embedding, and neither the run's tokenizer folder nor its teacher's is a sentence-transformers "
            "folder that says it; pass --pooling mean (or cls, max; +normalize to L2-normalise: mean+normalize is "
            "all-MiniLM-L6-v2's)."
        )


def folder_size(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No ``transformers`` progress bars (writing shards, loading weights) nor load reports inside the block."""
    from transformers.utils import logging as hf_logging

    disabled, verbosity = hf_logging.is_progress_bar_enabled() is False, hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if not disabled:
            hf_logging.enable_progress_bar()


def write_folder(target: Path, fill: Callable[[Path], object]) -> Path:
    """Fill a temporary folder next to ``target`` with ``fill`` (which writes and checks), then rename it to
    ``target``; an earlier ``target`` is replaced only then (and restored if the rename fails)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        with quiet_transformers():
            fill(temporary)
        if target.exists():
            old = temporary.with_name(temporary.name + ".old")
            os.replace(target, old)
            try:
                os.replace(temporary, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def save_hf_folder(network: nn.Module, directory: Path, spec: TextExport) -> nn.Module:
    """``save_pretrained`` a copy of ``network`` into ``directory`` with the tokenizer's special ids in its config,
    copy the tokenizer files there, and return the copy saved."""
    model = copy.deepcopy(network)
    vocab = model.get_input_embeddings().num_embeddings
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(spec.tokenizer, attribute, None)
        if isinstance(value, int) and 0 <= value < vocab:
            setattr(model.config, attribute, value)
            if getattr(model, "generation_config", None) is not None:
                setattr(model.generation_config, attribute, value)
    model.save_pretrained(str(directory))
    for file in TOKENIZER_FILES:
        if (spec.tokenizer_dir / file).is_file():
            shutil.copy2(spec.tokenizer_dir / file, directory / file)
    return model


def check_tokenizer(directory: Path, spec: TextExport, texts: Sequence[str]) -> None:
    """Raise unless ``AutoTokenizer.from_pretrained(directory)`` gives the run tokenizer's ids on ``texts``."""
    import transformers

    loaded = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    for text in texts:
        if loaded(text)["input_ids"] != spec.tokenizer(text)["input_ids"]:
            raise ValueError(
                f"the tokenizer files copied from {spec.tokenizer_spec!r} load as a tokenizer that encodes {text!r} "
                "differently from the run's tokenizer; the folder was not written."
            )


def write_hf(network: nn.Module, path: Path, inputs: Mapping[str, Tensor], spec: TextExport) -> ExportedFile:
    """The Hugging Face folder (module docstring), checked before it is renamed into place."""
    kind = model_kind(network)
    auto = auto_model_class(kind)
    diffs: list[float] = []

    def fill(directory: Path) -> None:
        saved = save_hf_folder(network, directory, spec)
        (directory / "README.md").write_text(spec.card, encoding="utf-8")
        write_preprocessing(directory / "preprocessing.json", spec.preprocessing)
        loaded = auto.from_pretrained(str(directory), local_files_only=True).eval()
        if type(loaded).__name__ != type(network).__name__:
            raise ValueError(
                f"{auto.__name__}.from_pretrained reloads the folder as {type(loaded).__name__}, not "
                f"{type(network).__name__}; it was not written."
            )
        diffs.append(max_abs_diff("hf", network, loaded, inputs, [shorter(inputs)]))
        check_tokenizer(directory, spec, sample_texts(spec.tokenizer, inputs))
        if kind == "causal_lm":
            check_generate(saved, loaded, inputs)

    write_folder(path, fill)
    how = f"{auto.__name__}.from_pretrained, tokenizer" + (", generate" if kind == "causal_lm" else "")
    return ExportedFile("hf", path, folder_size(path), diffs[0], how + " checked")


def check_generate(model: nn.Module, loaded: nn.Module, inputs: Mapping[str, Tensor]) -> None:
    """Raise unless greedy ``generate`` of the reloaded model gives the tokens of the saved one."""
    prompt = {key: value[:1, :4] for key, value in inputs.items()}
    settings = dict(max_new_tokens=GENERATED_TOKENS, do_sample=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model.generate(**prompt, **settings)
        try:
            got = loaded.generate(**prompt, **settings)
        except Exception as error:
            raise ValueError(
                f"generate fails on the reloaded folder ({type(error).__name__}: {error}); it was not written."
            ) from error
    if not torch.equal(expected, got):
        raise ValueError(
            f"generate on the reloaded folder gives {got.tolist()} but the network gives {expected.tolist()}; it was "
            "not written."
        )


def write_sentence_transformers(
    network: nn.Module, path: Path, inputs: Mapping[str, Tensor], spec: TextExport
) -> ExportedFile:
    """The sentence-transformers folder (module docstring), checked before it is renamed into place."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling as STPooling

    pooling = spec.pooling
    check_sentence_encoder(network, pooling)
    diffs: list[float] = []

    def reference(batch: Mapping[str, Tensor]) -> Tensor:
        return pooling(last_hidden_state(network, batch), batch["attention_mask"])

    def fill(directory: Path) -> None:
        transformer_dir = directory / "_transformer"
        encoder = network.base_model if model_kind(network) == "masked_lm" else network  # without its LM head
        save_hf_folder(encoder, transformer_dir, spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformer = Transformer(str(transformer_dir), max_seq_length=spec.max_length)
            modules = [transformer, STPooling(transformer.get_embedding_dimension(), pooling_mode=pooling.mode)]
            SentenceTransformer(modules=[*modules, *([Normalize()] if pooling.normalize else [])], device="cpu").save(
                str(directory)
            )
        shutil.rmtree(transformer_dir)
        (directory / "README.md").write_text(sentence_card(spec.card), encoding="utf-8")
        write_preprocessing(directory / "preprocessing.json", spec.preprocessing)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = SentenceTransformer(str(directory), device="cpu", local_files_only=True).eval()

        def embed(**batch: Tensor) -> Tensor:
            return loaded(dict(batch))["sentence_embedding"]

        diffs.append(max_abs_diff("sentence-transformers", lambda **b: reference(b), embed, inputs, [shorter(inputs)]))
        texts = sample_texts(spec.tokenizer, inputs)
        encoded = spec.tokenizer(
            texts, padding=True, truncation=spec.max_length is not None, max_length=spec.max_length, return_tensors="pt"
        )
        batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        with torch.no_grad():
            expected = reference(batch)
            got = torch.as_tensor(loaded.encode(texts, convert_to_tensor=True, batch_size=len(texts))).cpu()
        diff = float((got.float() - expected.float()).abs().max())
        if got.shape != expected.shape or not diff <= 1e-5 * max(1.0, float(expected.abs().max())):
            raise ValueError(
                f"SentenceTransformer.encode of the exported folder does not reproduce the network's {pooling} "
                f"embeddings (max abs diff {diff:.3g}, shapes {list(got.shape)} vs {list(expected.shape)}); it was "
                "not written."
            )
        diffs.append(diff)

    write_folder(path, fill)
    return ExportedFile(
        "sentence-transformers",
        path,
        folder_size(path),
        max(diffs),
        f"SentenceTransformer(folder), {pooling} pooling, encode checked",
    )


class TokenReadout(nn.Module):
    """``forward(input_ids, attention_mask)`` -> the logits (or last hidden states) of a ``transformers`` model: the
    graph the ONNX file holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.causal = model_kind(model) == "causal_lm"

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        extra = {"use_cache": False} if self.causal else {}
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra)
        logits = getattr(output, "logits", None)
        return logits if isinstance(logits, Tensor) else output.last_hidden_state


def write_text_onnx(
    network: nn.Module,
    path: Path,
    inputs: Mapping[str, Tensor],
    opset: int | None = None,
    log: Log = print,
    metadata: Mapping[str, str] | None = None,
) -> ExportedFile:
    """ONNX with inputs ``input_ids``/``attention_mask`` and dynamic batch and sequence axes, checked with onnxruntime
    on the batch, a batch of one and the batch at a shorter sequence length."""
    readout = TokenReadout(network).eval()
    output = "logits" if model_kind(network) != "base" else "last_hidden_state"
    made: list[str] = []

    def write(temporary: Path) -> None:
        exporter = text_to_onnx(readout, inputs, temporary, output, opset, log)
        written = onnx_opset(temporary)
        if opset is not None and written != opset:
            raise ValueError(
                f"cannot export {type(network).__name__} to ONNX at opset {opset}: the exporter wrote opset {written} "
                f"instead; pass another --opset, or omit it for the default."
            )
        if metadata:
            add_onnx_metadata(temporary, metadata)
        made.append(f"{exporter}, opset {written}, checked with onnxruntime at 2 sequence lengths")

    file = _write_checked("onnx", readout, path, inputs, write, _token_runner, "", extra=[shorter(inputs)])
    file.how = made[0]
    return file


def text_to_onnx(
    readout: TokenReadout, inputs: Mapping[str, Tensor], path: Path, output: str, opset: int | None, log: Log
) -> str:
    """Export ``readout`` to ``path``: the ``torch.export``-based exporter, else the TorchScript-based one."""
    arguments = (inputs["input_ids"], inputs["attention_mask"])
    names = {
        "input_names": ["input_ids", "attention_mask"],
        "output_names": [output],
        "opset_version": opset,
        "verbose": False,
    }
    errors: list[BaseException] = []
    if opset is None or opset >= DYNAMO_MIN_OPSET:
        try:
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            dynamic = {"dynamic_shapes": ({0: batch, 1: sequence}, {0: batch, 1: sequence}), "external_data": False}
            with _logger_quiet("onnxscript"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(readout, arguments, str(path), dynamo=True, **dynamic, **names)
            return "torch.export-based exporter"
        except Exception as error:
            errors.append(error)
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            log(
                f"ONNX: torch.export cannot capture {type(readout.model).__name__} ({detail}); trying the "
                "TorchScript-based exporter."
            )
    axes = {"batch": 0, "sequence": 1}
    dynamic_axes = {key: {v: k for k, v in axes.items()} for key in ("input_ids", "attention_mask", output)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(readout, arguments, str(path), dynamo=False, dynamic_axes=dynamic_axes, **names)
    except Exception as error:
        raise onnx_failure(readout.model, [*errors, error], opset) from error
    return "TorchScript-based exporter" + (" (torch.export failed)" if errors else "")


def _token_runner(path: Path) -> Callable[..., Tensor]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [entry.name for entry in session.get_inputs()]

    def run(**batch: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {name: batch[name].numpy() for name in names})[0])

    return run


# ----------------------------------------------------------------- the model card
def model_card(
    network: nn.Module,
    hparams: Mapping[str, Any],
    report: Mapping[str, Any] | None,
    spec: TextExport,
    source: str,
    module: str | None = None,
    teacher: nn.Module | None = None,
) -> str:
    """``README.md`` of the exported folders: what the network is, how it was distilled (the module, student, teacher
    and terms of the run's config, as the checkpoint's hyperparameters hold them; else the networks themselves), the
    distillation report's numbers when there is one, and how to load it."""
    kind = model_kind(network)
    tag = {"causal_lm": "text-generation", "masked_lm": "fill-mask"}.get(kind, "feature-extraction")
    auto = {"causal_lm": "AutoModelForCausalLM", "masked_lm": "AutoModelForMaskedLM"}.get(kind, "AutoModel")
    module = str(hparams.get("_class_path") or module or "a kd_lightning module")
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {tag}",
        "tags: [knowledge-distillation, kd_lightning]",
        "---",
        "",
        f"# {type(network).__name__}, distilled with kd_lightning",
        "",
        f"A {type(network).__name__} with {count_parameters(network):,} parameters, exported from `{source}`.",
        "",
        "## Recipe",
        "",
        f"- module: `{module}`",
        f"- student: {_describe(hparams.get('student') or network)}",
        f"- teacher: {_describe(hparams.get('teacher') or teacher)}",
    ]
    if hparams.get("teacher_weights"):
        lines.append(f"- teacher weights: `{hparams['teacher_weights']}`")
    if "ce_weight" in hparams:
        lines.append(f"- hard-label (language-model) loss weight: {hparams['ce_weight']}")
    for term in hparams.get("terms") or []:
        lines.append(f"- term: {_describe_term(term)}")
    lines += ["", f"Tokenizer: `{spec.tokenizer_spec}` (its files are in this folder); max length {spec.max_length}."]
    if spec.pooling is not None:
        lines.append(f"Sentence embedding: {spec.pooling} pooling of the last hidden states over the attention mask.")
    lines += _report_lines(report)
    lines += [
        "",
        "## Use",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
        f'model = {auto}.from_pretrained("<this folder>")',
        "```",
        "",
    ]
    return "\n".join(lines)


def sentence_card(card: str) -> str:
    """The model card of the sentence-transformers folder: the Hugging Face card, loaded with sentence-transformers."""
    usage = [
        "## Use with sentence-transformers",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'embeddings = SentenceTransformer("<this folder>").encode(["A sentence to embed."])',
        "```",
        "",
    ]
    card = card.replace("library_name: transformers", "library_name: sentence-transformers", 1)
    return card.rstrip("\n") + "\n\n" + "\n".join(usage)


def _describe(config: Any) -> str:
    if isinstance(config, Mapping) and "class_path" in config:
        arguments = config.get("init_args") or {}
        shown = ", ".join(f"{key}={value!r}" for key, value in dict(arguments).items() if value is not None)
        return f"`{config['class_path']}`" + (f" ({shown})" if shown else "")
    if config is None:
        return "none"
    if isinstance(config, nn.Module):
        return f"`{type(config).__name__}` ({count_parameters(config):,} parameters)"
    return f"`{config}`"


def _describe_term(term: Any) -> str:
    if isinstance(term, Mapping):
        arguments = dict(term.get("init_args") or term)
        loss = arguments.get("loss")
        extra = ", ".join(f"{key}={value!r}" for key, value in arguments.items() if key != "loss" and value is not None)
        return _describe(loss) + (f" ({extra})" if extra else "")
    loss = getattr(term, "loss", None)
    return f"`{type(loss).__name__ if loss is not None else type(term).__name__}` (weight {getattr(term, 'weight', 1)})"


def _report_lines(report: Mapping[str, Any] | None) -> list[str]:
    if not report or not isinstance(report.get("networks"), list):
        return []
    columns = [
        ("parameters", "parameters", "{:,}"),
        ("size_bytes", "size (kB)", "{:,.1f}"),
        ("latency_ms", "CPU latency, batch 1 (ms)", "{:.3f}"),
        ("acc", "accuracy", "{:.4f}"),
        ("ppl", "perplexity", "{:.3f}"),
        ("agreement", "agreement with teacher", "{:.4f}"),
        ("kl", "KL to teacher", "{:.4f}"),
        ("cosine", "cosine to teacher", "{:.4f}"),
    ]
    rows = [row for row in report["networks"] if isinstance(row, Mapping)]
    shown = [column for column in columns if any(row.get(column[0]) is not None for row in rows)]
    lines = ["", "## Distillation report", "", "| network | " + " | ".join(c[1] for c in shown) + " |"]
    lines.append("|---" * (len(shown) + 1) + "|")
    for row in rows:
        cells = []
        for key, _, pattern in shown:
            value = row.get(key)
            value = value / 1000 if key == "size_bytes" and value is not None else value
            cells.append("-" if value is None else pattern.format(value))
        lines.append(f"| {row.get('name')} | " + " | ".join(cells) + " |")
    if report.get("headline"):
        lines += ["", f"**{report['headline']}**"]
    return lines
