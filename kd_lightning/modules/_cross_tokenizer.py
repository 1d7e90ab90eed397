"""Checks of a cross-tokenizer run before its first step, and the binding of the two vocabularies.

Data that tokenizes each text for both models (``TextDataModule(teacher_tokenizer=...)``: batches with a
:attr:`~kd_lightning.core.batch.Batch.teacher_view`) pairs a student and a teacher that read different token
sequences. Only losses made for that (``cross_tokenizer = True``: ULD, span-aligned KL) may compare their logits; a
loss that compares position by position over one vocabulary would pair unrelated tokens and still train, silently
wrong. Each mismatch below is one clear error before the first step.
"""

from __future__ import annotations

from typing import Any

from kd_lightning.core.batch import Batch
from kd_lightning.core.tokens import is_causal_lm
from kd_lightning.modules._agreement import _datamodule, _describe_term, _terms

CROSS_LOSSES = "kd_lightning.losses.ULDLoss (no vocabulary mapping) or SpanAlignedKLLoss (aligned spans, shared tokens)"


def _is_cross(term: Any) -> bool:
    return bool(getattr(term.loss, "cross_tokenizer", False))


def check_cross_tokenizer(module: Any, batch: Batch) -> None:
    """Raise when the parts of a run disagree about tokenizations (see the module docstring); bind the shared
    vocabulary of span-aligned losses from the datamodule's two tokenizers."""
    terms = _terms(module)
    two = batch.teacher_view is not None
    module._two_tokenizations = two
    if not two:
        for where, term in terms:
            if _needs_spans(term):
                raise ValueError(
                    f"{_describe_term(where, term)} aligns two tokenizations of each text by character spans, but "
                    f"the data tokenizes for one model only; set data.init_args.teacher_tokenizer to the teacher's "
                    f"tokenizer (TextDataModule), or use kd_lightning.losses.ULDLoss, which also pairs positions of "
                    f"one tokenization."
                )
        return
    for where, term in terms:
        if term.token_kind is not None and not _is_cross(term):
            raise ValueError(
                f"{_describe_term(where, term)} compares the two networks position by position, but the data "
                f"tokenizes each text for both models (data.init_args.teacher_tokenizer): the teacher reads other "
                f"tokens at other positions, over another vocabulary, so the loss would pair unrelated tokens; use "
                f"{CROSS_LOSSES}, or remove teacher_tokenizer to distil with one shared tokenizer."
            )
    _check_teacher_source(module)
    _check_causal(module)
    datamodule = _datamodule(module)
    for where, term in terms:
        if not _needs_spans(term):
            continue
        if batch.span_groups is None:
            raise ValueError(
                f"{_describe_term(where, term)} aligns the two tokenizations by character spans, which needs the "
                f"character offsets of both tokenizers, but at least one is not a fast tokenizer (no "
                f"offset_mapping), so the data has no spans; use tokenizers with a tokenizer.json (fast), or "
                f"kd_lightning.losses.ULDLoss, which pairs the l-th tokens and needs no offsets."
            )
        bind = getattr(term.loss, "bind_vocabularies", None)
        if callable(bind) and not term.loss.is_bound:
            if datamodule is None or getattr(datamodule, "teacher_tokenizer", None) is None:
                raise ValueError(
                    f"{_describe_term(where, term)} needs the two vocabularies: pass student_shared/teacher_shared, "
                    f"or fit with a TextDataModule that has both tokenizers (teacher_tokenizer)."
                )
            bind(datamodule.tokenizer.get_vocab(), datamodule.teacher_tokenizer.get_vocab())


def _needs_spans(term: Any) -> bool:
    return "student_groups" in getattr(term.loss, "batch_context", ())


def _check_teacher_source(module: Any) -> None:
    teacher = getattr(module, "teacher", None)
    if teacher is None:
        return
    if not getattr(teacher, "scores_new_inputs", True) or not teacher.networks():
        raise ValueError(
            f"the data tokenizes each text for both models (data.init_args.teacher_tokenizer), which a frozen teacher "
            f"network reads, but the teacher is {teacher.describe()}; give the teacher network itself (model."
            f"init_args.teacher with teacher_weights), or remove teacher_tokenizer."
        )
    if getattr(module, "on_policy", None) is not None:
        raise ValueError(
            "on-policy distillation samples new tokens from one tokenizer, but the data tokenizes each text for both "
            "models (data.init_args.teacher_tokenizer): the samples would need tokenizing again for the teacher, "
            "which is not supported; remove on_policy, or distil off-policy across tokenizers."
        )


def _check_causal(module: Any) -> None:
    for name, network in module.networks().items():
        if not is_causal_lm(network):
            raise ValueError(
                f"cross-tokenizer distillation compares next-token distributions of two causal language models, but "
                f"the {name} ({type(network).__name__}) is not a causal LM; build both with task: causal_lm "
                f"(model_from_config, pretrained_model)."
            )
