"""Validation and test metrics of the deployable network, by the kind of its output.

A distilled student is judged by accuracy and by fidelity to its teacher. What those mean depends on the output:

* ``classes`` — logits ``[B, C]``: ``acc`` and ``teacher_acc`` on the labelled samples (``-100`` = unlabelled),
  ``agreement`` (top-1 match rate of student and teacher) and ``kl`` = KL(teacher || student), on every sample.
* ``tokens`` — language-model logits ``[B, L, V]``: ``acc``/``teacher_acc`` (top-1 on the labelled tokens, shifted for
  a causal LM) and ``ppl`` (perplexity of those tokens, ``exp`` of the mean negative log-likelihood); ``agreement``
  and ``kl`` per real token.
* ``hidden`` — a model without logits (a Hugging Face base model, ``last_hidden_state`` ``[B, L, H]``): ``cosine``,
  the mean cosine similarity of student and teacher states per real token (when their widths are equal).

A batch without labels logs only the teacher comparisons: a label-free transfer set is still measured.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import KLDivergence

from kd_lightning.core.taps import HIDDEN
from kd_lightning.core.tokens import IGNORE_INDEX, Targets

CLASSES, TOKENS = "classes", "tokens"
Updates = dict[str, tuple[str, tuple[Tensor, ...]]]
"""``{logged name: (metric key, update arguments)}``."""


class Perplexity(MeanMetric):
    """``exp`` of the mean of the per-token negative log-likelihoods it is updated with (reduced over processes)."""

    def compute(self) -> Tensor:
        return super().compute().exp()


def output_kind(logits: Tensor, tap_kind: str) -> str:
    """``"classes"`` (``[B, C]``), ``"tokens"`` (``[B, L, V]`` logits) or ``"hidden"`` (a model without logits)."""
    if tap_kind == HIDDEN:
        return HIDDEN
    return TOKENS if logits.ndim == 3 else CLASSES


def stage_metrics(num_classes: int) -> nn.ModuleDict:
    """The metrics of one stage (validation or test) for every output kind; only those of the run's kind are used."""
    return nn.ModuleDict(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX),
            "teacher_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX),
            "agreement": MulticlassAccuracy(num_classes, average="micro"),
            "kl": KLDivergence(log_prob=True, reduction="mean"),
            "token_acc": MeanMetric(),
            "token_teacher_acc": MeanMetric(),
            "token_agreement": MeanMetric(),
            "token_kl": MeanMetric(),
            "ppl": Perplexity(),
            "teacher_ppl": Perplexity(),
            "cosine": MeanMetric(),
        }
    )


def class_updates(logits: Tensor, teacher: Tensor | None, labels: Tensor | None) -> Updates:
    """Metric updates for logits ``[B, C]`` (teacher ``[B, C]`` or ``None``, labels ``[B]`` or ``None``)."""
    updates: Updates = {}
    if labels is not None:
        updates["acc"] = ("acc", (logits, labels))
        if teacher is not None:
            updates["teacher_acc"] = ("teacher_acc", (teacher, labels))
    if teacher is not None:
        updates["agreement"] = ("agreement", (logits, teacher.argmax(dim=-1)))
        updates["kl"] = ("kl", (F.log_softmax(teacher.float(), -1), F.log_softmax(logits.float(), -1)))
    return updates


def token_updates(logits: Tensor, teacher: Tensor | None, tokens: Targets) -> Updates:
    """Metric updates for logits ``[B, L, V]``: accuracy and perplexity on the labelled tokens (the teacher's too),
    agreement and KL per real token (positions aligned with the logits, see :mod:`kd_lightning.core.tokens`)."""
    updates: Updates = {}
    prediction = logits.argmax(dim=-1)
    if tokens.labels is not None:
        labelled, labels = tokens.mask("labelled"), tokens.aligned_labels()
        if bool(labelled.any()):
            target = labels[labelled]
            updates["acc"] = ("token_acc", ((prediction[labelled] == target).float(),))
            nll = F.cross_entropy(logits[labelled].float(), target, reduction="none")
            updates["ppl"] = ("ppl", (nll,))
            if teacher is not None:
                teacher_rows = teacher[labelled]
                updates["teacher_acc"] = ("token_teacher_acc", ((teacher_rows.argmax(-1) == target).float(),))
                updates["teacher_ppl"] = (
                    "teacher_ppl",
                    (F.cross_entropy(teacher_rows.float(), target, reduction="none"),),
                )
    real = tokens.mask("real")
    if teacher is not None and bool(real.any()):
        student_rows, teacher_rows = logits[real].float(), teacher[real].float()
        updates["agreement"] = ("token_agreement", ((prediction[real] == teacher_rows.argmax(-1)).float(),))
        kl = F.kl_div(
            F.log_softmax(student_rows, -1), F.log_softmax(teacher_rows, -1), reduction="none", log_target=True
        ).sum(-1)
        updates["kl"] = ("token_kl", (kl,))
    return updates


def hidden_updates(hidden: Tensor, teacher: Tensor | None, tokens: Targets) -> Updates:
    """``cosine`` of student and teacher states ``[B, L, H]`` per real token (only when the widths are equal)."""
    if teacher is None or teacher.shape != hidden.shape:
        return {}
    real = tokens.mask("hidden")
    if not bool(real.any()):
        return {}
    cosine = F.cosine_similarity(hidden[real].float(), teacher[real].float(), dim=-1)
    return {"cosine": ("cosine", (cosine,))}


def evaluation_updates(kind: str, logits: Tensor, teacher: Tensor | None, target: Targets) -> Updates:
    """The metric updates of one evaluation batch for an output of ``kind``."""
    if kind == CLASSES:
        return class_updates(logits, teacher, target.labels)
    tokens = target.for_outputs(logits)
    if kind == TOKENS:
        return token_updates(logits, teacher, tokens)
    return hidden_updates(logits, teacher, tokens)
