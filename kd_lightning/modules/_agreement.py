"""Parts of a module that must agree, checked before the first optimizer step.

* the networks' numbers of classes (or tokens) and ``num_classes``; a hard-label loss and a network with logits;
* the data's task and every trained language model (:func:`check_data_task`): masked-LM labels for a masked LM,
  causal-LM labels (``labels == input_ids``) for a causal one, decided from the first training batch
  (:func:`label_task`) and the networks (:func:`language_model_kind`);
* the causality of the networks a token-level logit loss compares (:func:`check_causality`);
* each loss and the kind of output it reads (:func:`check_output_kinds`): token losses on vocabulary logits, not on
  hidden states; classification losses on ``[B, C]`` logits, not on ``[B, L, V]`` token logits;
* the data's tokenizer and the tokenizer a pretrained model directory ships (:func:`check_tokenizer`);
* the datamodule's ``max_length`` and every network's position embeddings (:func:`check_max_length`);
* the networks and their feature taps; the trainable parameters and the optimizer.

The checks that need the module run in :func:`check_classes` (inside the dry run); those that need only the first
batch and the networks run from :func:`kd_lightning.modules._first_batch.check_inputs_fit`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.objective import DistillTerm
from kd_lightning.core.taps import HIDDEN, LOGITS
from kd_lightning.core.tokens import IGNORE_INDEX, is_causal_lm
from kd_lightning.files.weights import describe_keys
from kd_lightning.models.text import shipped_tokenizer_directory
from kd_lightning.modules import _evaluation

try:  # FSDP2 (fully_shard modules under ModelParallelStrategy)
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # a torch without it: nothing to reshard
    FSDPModule = ()

CAUSAL, MASKED, SHIFTED = "causal", "masked", "shifted"
"""What a language model predicts at position ``t`` (token ``t + 1``, or token ``t`` itself, hidden in the input), and
:data:`SHIFTED`: labels that are already the next tokens (``labels[t] == input_ids[t + 1]``)."""
POSITION_MODULES = ("position_embeddings", "wpe", "embed_positions")
"""Names (last part) of the learned absolute position embeddings of Hugging Face models (BERT, GPT-2, OPT/BART)."""
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_positions")
TOKEN_LOSSES = "kd_lightning.losses.ForwardKLLoss (Hinton's KD per token), ReverseKLLoss, GeneralizedJSDLoss"
HIDDEN_LOSSES = "kd_lightning.losses.HiddenCosineLoss or HiddenMSELoss"


def check_classes(module: Any, student: dict[str, Tensor], teacher: dict[str, Tensor] | None) -> None:
    """Raise before training when the parts of the module disagree (see :func:`check_agreement`), when the student,
    teacher and ``num_classes`` disagree on the number of classes (or tokens), or when a hard-label loss is asked of a
    network without logits."""
    check_agreement(module, student)
    kind = module.output_kind(student[LOGITS])
    if kind == HIDDEN:
        if module.objective.ce_weight > 0:
            raise ValueError(
                f"the student returns hidden states {tuple(student[LOGITS].shape)} (a model without logits, such "
                f"as a Hugging Face BertModel), so there is no hard-label loss to compute but ce_weight="
                f"{module.objective.ce_weight:g}; set ce_weight: 0 (hidden-state terms only), or give the model a "
                f"head (kd_lightning.models.text with task: masked_lm or causal_lm)."
            )
        return
    student_classes, num_classes = student[LOGITS].shape[-1], module.num_classes
    if teacher is not None and teacher[LOGITS].shape[-1] != student_classes and not _across_vocabularies(module):
        if kind == _evaluation.TOKENS:
            raise ValueError(
                f"teacher and student must share a vocabulary but the teacher predicts "
                f"{teacher[LOGITS].shape[-1]} tokens and the student {student_classes}; build the student for the "
                f"teacher's tokenizer: kd_lightning.models.text.student_from_teacher, or model_from_config with "
                f"vocab_size: {teacher[LOGITS].shape[-1]}; or distil across tokenizers: give the data the teacher's "
                f"tokenizer (data.init_args.teacher_tokenizer) and compare with kd_lightning.losses.ULDLoss or "
                f"SpanAlignedKLLoss."
            )
        raise ValueError(
            f"teacher and student must predict the same classes but the teacher has "
            f"{teacher[LOGITS].shape[-1]} outputs and the student {student_classes}; set the same num_classes "
            f"in both networks' init_args."
        )
    if kind == _evaluation.TOKENS:
        if student_classes < num_classes:
            raise ValueError(
                f"the student predicts {student_classes} tokens but the data's tokenizer has num_classes="
                f"{num_classes} tokens; build the model for that tokenizer (model_from_config vocab_size: "
                f"{num_classes}), or use the tokenizer the model was trained with."
            )
        return
    if student_classes != num_classes:
        raise ValueError(
            f"expected the student to output num_classes={num_classes} logits but it has "
            f"{student_classes}; set num_classes={num_classes} in the student's init_args."
        )


def _across_vocabularies(module: Any) -> bool:
    """Whether the data tokenizes each text for both models and every term that reads the teacher's logits compares
    distributions over two vocabularies (``cross_tokenizer = True``), so teacher and student may predict different
    token sets."""
    if not getattr(module, "_two_tokenizations", False):  # one tokenization feeds both: one vocabulary
        return False
    readers = [term for _, term in _terms(module) if LOGITS in term.teacher_names]
    return bool(readers) and all(getattr(term.loss, "cross_tokenizer", False) for term in readers)


def check_agreement(module: Any, student: Mapping[str, Tensor]) -> None:
    """The checks of the parts the module holds, once the networks ran on the first batch: the data's tokenizer and
    ``max_length`` against the networks, the causality of the networks a token-level logit loss compares, and each
    loss against the kind of output it reads."""
    check_tokenizer(module)
    check_max_length(module)
    check_causality(module)
    check_output_kinds(module, student)


# ----------------------------------------------------------------- language models and their data
def language_model_kind(network: nn.Module) -> str | None:
    """:data:`CAUSAL` for a causal language model, :data:`MASKED` for a masked one (a ``*ForMaskedLM`` class, or a
    network with ``is_causal_lm = False``), ``None`` for anything else (a classifier, a model without a head).

    Example:
        >>> language_model_kind(nn.Linear(2, 2)) is None
        True
    """
    if is_causal_lm(network):
        return CAUSAL
    if getattr(network, "is_causal_lm", None) is False or type(network).__name__.endswith("ForMaskedLM"):
        return MASKED
    return None


def label_task(batch: Batch) -> str | None:
    """What the labels of a token batch train, decided from ``input_ids``, ``labels`` and ``attention_mask``.

    * :data:`CAUSAL`: every labelled token's label is its own input id (Hugging Face's causal-LM convention: the model
      shifts the labels itself) and more than half of the real tokens are labelled (a masked batch keeps 10% of its
      masked tokens unchanged, so a few copies could be chance; most of the sequence cannot);
    * :data:`SHIFTED`: the labels are the *next* input ids (``labels[t] == input_ids[t + 1]``, 90% or more);
    * :data:`MASKED`: a minority of the real tokens is labelled (at most 60%) and most labelled inputs differ from
      their labels (BERT's masking replaces 90% of the chosen tokens);
    * ``None``: no labels, no ``input_ids``, or labels of another kind (token classes; copies of a minority of the
      tokens, such as completion-only labels, which do not tell a causal batch from a masked one for sure).

    Example:
        >>> ids = torch.tensor([[5, 6, 7, 8]])
        >>> label_task(Batch({"input_ids": ids}, ids.clone()))
        'causal'
        >>> label_task(Batch({"input_ids": torch.tensor([[5, 4, 4, 8, 9, 10]])},
        ...                  torch.tensor([[-100, 6, 7, -100, -100, -100]])))
        'masked'
    """
    ids = batch.inputs.get("input_ids") if isinstance(batch.inputs, Mapping) else None
    labels = batch.labels
    if not isinstance(ids, Tensor) or not isinstance(labels, Tensor) or ids.ndim != 2 or ids.shape != labels.shape:
        return None
    mask = batch.attention_mask
    real = mask.bool() if isinstance(mask, Tensor) and mask.shape == ids.shape else torch.ones_like(ids, dtype=bool)
    labelled = (labels != IGNORE_INDEX) & real
    count, tokens = int(labelled.sum()), int(real.sum())
    if count == 0:
        return None
    copies = int(((labels == ids) & labelled).sum())
    if copies == count and 2 * count > tokens:
        return CAUSAL
    following = int(((labels[:, :-1] == ids[:, 1:]) & labelled[:, :-1]).sum())
    if count >= 4 and 10 * following >= 9 * count:
        return SHIFTED
    if count >= 2 and 2 * copies <= count and 10 * count <= 6 * tokens:
        return MASKED
    return None


def _trained(network: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in network.parameters())


def check_data_task(batch: Batch, networks: Mapping[str, nn.Module]) -> None:
    """Raise when a trained language model (a student, a peer; frozen teachers are not trained on the labels) is not
    of the kind the first batch's labels train (:func:`label_task`, :func:`language_model_kind`)."""
    task = label_task(batch)
    if task is None:
        return
    for name, network in networks.items():
        kind = language_model_kind(network)
        if kind is None or kind == task or not _trained(network):
            continue
        model = f"the {name} ({type(network).__name__})"
        if task == SHIFTED:
            raise ValueError(
                f"the first training batch's labels are its input_ids shifted by one (labels[t] = input_ids[t + 1]) "
                f"but {model} is a {kind} language model, which reads labels aligned with input_ids (a causal LM "
                f"shifts them itself): it would learn to predict the token after the next one; give labels equal to "
                f"input_ids, -100 on padding, as TextDataModule task: clm does."
            )
        if kind == MASKED:
            raise ValueError(
                f"{model} is a masked language model but the first training batch holds causal-LM labels (labels "
                f"equal input_ids on every labelled token, no token masked, as TextDataModule's task=clm gives): a "
                f"masked LM sees the very token it must predict and learns to copy it, which looks like a great model "
                f"and learns nothing; give masked-LM data (TextDataModule task: mlm), or make the {name} a causal LM "
                f"(model_from_config model_type: gpt2, task: causal_lm; pretrained_model task: causal_lm)."
            )
        raise ValueError(
            f"{model} is a causal language model (its logits at position t predict token t + 1) but the first "
            f"training batch holds masked-LM labels (-100 except at the masked positions, whose inputs were replaced, "
            f"as TextDataModule's task=mlm gives): it would learn to predict a hidden token one position late from "
            f"inputs full of mask tokens; give causal-LM data (TextDataModule task: clm, labels = input_ids), or "
            f"make the {name} a masked LM (model_from_config model_type: bert, task: masked_lm)."
        )


def _terms(module: Any) -> list[tuple[str, DistillTerm]]:
    """Every distillation term of the module with where it is configured (``terms[i]``, else its name)."""
    objective = getattr(module, "objective", None)
    listed = list(getattr(objective, "terms", []))
    found = [term for term in module.modules() if isinstance(term, DistillTerm)]
    return [
        (f"terms[{listed.index(term)}]" if term in listed else f"term {term.name!r}", term)
        for term in dict.fromkeys([*listed, *found])
    ]


def _describe_term(where: str, term: DistillTerm) -> str:
    place = f", model.init_args.{where}" if where.startswith("terms[") else ""
    return f"the distillation term {term.name!r} ({type(term.loss).__name__}{place})"


def _role(name: str) -> str:
    """A tapped network's path as a role: ``teacher.network`` -> ``teacher``, ``peers.b`` -> ``peer b``."""
    if name.startswith("peers."):
        return f"peer {name.split('.', 1)[1]}"
    return name.split(".", 1)[0]


def _head_task(network: nn.Module) -> str:
    """The builders' task that gives ``network``'s family a language-model head."""
    model_type = getattr(getattr(network, "config", None), "model_type", None)
    return {"gpt2": "causal_lm", "bert": "masked_lm"}.get(model_type, "masked_lm or causal_lm")


def check_causality(module: Any) -> None:
    """Raise when a token-level logit loss compares a causal language model with a masked one: their logits at
    position ``t`` predict different tokens (``t + 1`` and ``t``)."""
    terms = [
        (where, term)
        for where, term in _terms(module)
        if term.token_kind == LOGITS and LOGITS in (*term.student_names, *term.teacher_names)
    ]
    if not terms:
        return
    kinds = {name: (language_model_kind(network), network) for name, network in module.networks().items()}
    causal = [f"the {name} ({type(network).__name__})" for name, (kind, network) in kinds.items() if kind == CAUSAL]
    masked = [f"the {name} ({type(network).__name__})" for name, (kind, network) in kinds.items() if kind == MASKED]
    if causal and masked:
        raise ValueError(
            f"{_describe_term(*terms[0])} compares logits token by token, but {' and '.join(causal)} is a causal "
            f"LM (its logits at position t predict token t + 1) and {' and '.join(masked)} a masked LM (its logits "
            f"at t predict token t): the loss would pull one's prediction of each token toward the other's prediction "
            f"of the next; give the networks the same kind (all causal_lm, or all masked_lm, in pretrained_model/"
            f"model_from_config task), or compare hidden states ({HIDDEN_LOSSES})."
        )


def check_output_kinds(module: Any, student: Mapping[str, Tensor]) -> None:
    """Raise when a loss reads an output of another kind than it compares: a token-level logit loss on a network that
    returns hidden states (no head), or a classification loss of the library on ``[B, L, V]`` token logits."""
    hidden = [
        (name, network) for name, network, tap in module.tapped_networks() if getattr(tap, "output_kind", "") == HIDDEN
    ]
    tokens = (
        isinstance(student.get(LOGITS), Tensor)
        and student[LOGITS].ndim == 3
        and not any(name == "student" for name, _ in hidden)
    )
    for where, term in _terms(module):
        reads = {"student": LOGITS in term.student_names, "teacher": LOGITS in term.teacher_names}
        if term.token_kind == LOGITS:
            for name, network in hidden:
                role = "student" if name == "student" or name.startswith("peers.") else "teacher"
                if reads[role]:
                    raise ValueError(
                        f"{_describe_term(where, term)} compares vocabulary logits [B, L, V] but the {_role(name)} "
                        f"({type(network).__name__}) has no language-model head and returns hidden states: they would "
                        f"be softmaxed as if they were token probabilities; compare hidden states with "
                        f"{HIDDEN_LOSSES}, or give the {_role(name)} a language-model head (pretrained_model or "
                        f"model_from_config task: {_head_task(network)})."
                    )
        elif term.token_kind is None and tokens and reads["student"] and _library_loss(term.loss):
            shape = tuple(student[LOGITS].shape)
            raise ValueError(
                f"{_describe_term(where, term)} compares class logits [B, C] but the student returns token logits "
                f"{shape} [B, L, V] (a language model); use a token-level loss, which reads the real tokens of each "
                f"sequence: {TOKEN_LOSSES}, SkewKLLoss, TVDLoss."
            )


def _library_loss(loss: nn.Module) -> bool:
    """Whether ``loss`` is one of the library's losses (whose classification losses take ``[B, C]`` logits)."""
    return type(loss).__module__.startswith("kd_lightning.losses")


# ----------------------------------------------------------------- the datamodule against the networks
def _datamodule(module: Any) -> Any:
    trainer = getattr(module, "_trainer", None)
    return getattr(trainer, "datamodule", None) if trainer is not None else None


@functools.lru_cache(maxsize=8)
def shipped_tokenizer(directory: str) -> Any:
    """The tokenizer in a pretrained model directory (loaded once per directory), or ``None`` if it does not load."""
    from kd_lightning.data.corpus import load_tokenizer

    try:
        return load_tokenizer(directory, field="the model directory's tokenizer")
    except (OSError, ValueError, ImportError):
        return None


def vocabulary_difference(expected: Any, given: Any) -> str | None:
    """How tokenizer ``given`` differs from ``expected`` (sizes, or the tokens whose ids differ), or ``None``."""
    if len(expected) != len(given):
        return f"the model's has {len(expected):,} tokens, the data's {len(given):,}"
    ours, theirs = expected.get_vocab(), given.get_vocab()
    moved = [token for token, index in ours.items() if theirs.get(token) != index]
    if not moved:
        return None
    token = moved[0]
    return (
        f"the same number of tokens, {len(expected):,}, but {len(moved):,} of them have other ids (e.g. {token!r}: "
        f"{ours[token]} in the model's, {theirs.get(token)} in the data's)"
    )


def check_tokenizer(module: Any) -> None:
    """Raise when a network was loaded from a pretrained directory that ships a tokenizer and the datamodule's
    tokenizer is another one (another size, or the same tokens under other ids): every id would mean another token
    to the network, although every id may fit its embedding."""
    datamodule = _datamodule(module)
    for name, network in module.networks().items():
        tokenizer, field = getattr(datamodule, "tokenizer", None), "tokenizer"
        if name.startswith("teacher") and getattr(datamodule, "teacher_tokenizer", None) is not None:
            tokenizer, field = datamodule.teacher_tokenizer, "teacher_tokenizer"  # cross-tokenizer data
        if tokenizer is None or not callable(getattr(tokenizer, "get_vocab", None)):
            continue
        directory = shipped_tokenizer_directory(network)
        shipped = shipped_tokenizer(directory) if directory is not None else None
        if shipped is None:
            continue
        difference = vocabulary_difference(shipped, tokenizer)
        if difference is None:
            continue
        given = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(
            f"the data is tokenized by {given!r} ({type(tokenizer).__name__}) but the {name} "
            f"({type(network).__name__}) comes from {directory!r}, which ships the tokenizer it was trained with "
            f"({type(shipped).__name__}), another one: {difference}. Every token id would mean another token to the "
            f"{name}, even where every id fits its embedding; set data.init_args.{field}: {directory!r}, the "
            f"model's own."
        )


def position_limit(network: nn.Module) -> tuple[int, str] | None:
    """The longest sequence a network's learned absolute position embeddings take, and the config field that sets it
    (``(128, "config.n_positions=128")``); ``None`` for networks without them (rotary or relative positions)."""
    for name, sub in network.named_modules():
        if not isinstance(sub, nn.Embedding) or name.rsplit(".", 1)[-1] not in POSITION_MODULES:
            continue
        limit = sub.num_embeddings - int(getattr(sub, "offset", 0) or 0)
        if sub.padding_idx is not None:  # RoBERTa's positions start after the padding index
            limit -= sub.padding_idx + 1
        config = getattr(network, "config", None)
        fields = [field for field in POSITION_FIELDS if getattr(config, field, None) == sub.num_embeddings]
        where = f"config.{fields[0]}={sub.num_embeddings}" if fields else f"{name}: {sub.num_embeddings} positions"
        return limit, where
    return None


def positions_error(length: int, what: str, name: str, network: nn.Module, limit: tuple[int, str]) -> ValueError:
    """The error of sequences of ``length`` tokens beyond a network's position embeddings."""
    most, where = limit
    return ValueError(
        f"{what} but the {name} ({type(network).__name__}) has position embeddings for only {most} tokens ({where}): "
        f"longer sequences fail inside the model (an IndexError); set the datamodule's max_length to at most {most} "
        f"(data.init_args.max_length), or build the model for longer sequences (model_from_config max_positions: "
        f"{length})."
    )


def check_max_length(module: Any) -> None:
    """Raise when the datamodule's ``max_length`` is beyond a network's position embeddings (the first batch may be
    shorter; a later one would fail inside the model)."""
    datamodule = _datamodule(module)
    hparams = getattr(datamodule, "hparams", None)
    length = hparams.get("max_length") if isinstance(hparams, Mapping) else getattr(datamodule, "max_length", None)
    if isinstance(length, bool) or not isinstance(length, int):
        return
    two = getattr(datamodule, "teacher_tokenizer", None) is not None
    for name, network in module.networks().items():
        field, most = "max_length", length
        if two and name.startswith("teacher"):  # the teacher reads its own tokens
            field, most = "teacher_max_length", hparams.get("teacher_max_length") or length
        limit = position_limit(network)
        if limit is not None and most > limit[0]:
            what = f"the datamodule's {field}={most} allows sequences of {most} tokens"
            raise positions_error(most, what, name, network, limit)


# ----------------------------------------------------------------- networks, taps and the optimizer
def check_taps(module: Any) -> None:
    """Raise when a network was replaced after construction (the taps, and so training, would use the old one)."""
    for name, network, tap in module.tapped_networks():
        if tap is None or tap.model is network:
            continue
        wrapped = hasattr(network, "_orig_mod")
        wrapper = f" by a torch.compile wrapper (set compile: [{name}] instead)" if wrapped else ""
        raise ValueError(
            f"module.{name} was replaced after the module was built{wrapper}: the feature taps and the losses "
            f"still read the network given to __init__, so training would silently use that one; build a new "
            f"{type(module).__name__} with the network as its argument instead of assigning it."
        )


def check_optimized(module: Any, expected: set[int] | None = None) -> set[int]:
    """Raise when a trainable parameter is in no optimizer (e.g. an adapter built after the optimizer)."""
    for sub in module.modules():  # FSDP2 leaves a root's unsharded parameters registered after an eval forward
        if isinstance(sub, FSDPModule):
            sub.reshard()  # register the sharded parameters again: those are the optimizer's
    optimizers = module.trainer.optimizers
    optimized = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    if not optimized:
        return optimized
    left_out = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in optimized]
    if left_out:
        when = "during the first training step" if expected is not None else "after the optimizer was built"
        raise RuntimeError(
            f"{len(left_out)} trainable parameter(s) are in no optimizer and would never be trained: "
            f"{describe_keys(left_out, 4)} (created {when}). Build every loss module in compute_losses, which the "
            f"dry run in setup() calls before the optimizer exists, or freeze them with requires_grad_(False)."
        )
    return optimized
