"""Per-batch context a loss asks for by name, beyond the two networks' outputs and the labels.

A loss declares the keyword arguments it needs in a class attribute ``batch_context`` (a tuple of the names below);
:class:`~kd_lightning.core.objective.DistillTerm` resolves them from the batch's
:class:`~kd_lightning.core.tokens.Targets` (built by :meth:`~kd_lightning.core.batch.Batch.targets`) and passes them
to ``forward``. Nothing reaches a loss through a side channel, and a loss never reads the batch itself::

    class MyLoss(DistillationLoss):
        batch_context = ("index", "dataset_size")

        def forward(self, student, teacher, target=None, index=None, dataset_size=None): ...

The names (a name the batch cannot supply gives ``None``; the loss says what it needs):

* ``index``: ``[B]`` int64, each sample's index in its dataset (the loader must give it: ``return_index: true``);
* ``dataset_size``: the number of samples of the training dataset (set by the Lightning modules during a fit);
* ``dataset_labels``: ``[N]`` int64, the class of every sample of the training dataset, when the dataset exposes them
  (a ``labels`` or ``targets`` attribute, as the digits, CIFAR and ImageFolder datasets do), else ``None``;
* ``teacher_mask``: ``[B, L_t]`` bool, the positions of the teacher's own tokenization the loss's ``positions`` rule
  selects (cross-tokenizer batches; ``None`` when both networks read the same tokens);
* ``student_groups`` / ``teacher_groups``: ``[B, L_s]`` / ``[B, L_t]`` int64, per row of each network's logits the
  aligned character span whose token that row predicts (``-1``: none), keeping only spans whose every token row is
  selected on both sides (cross-tokenizer batches with character offsets);
* ``student_tokens`` / ``teacher_tokens``: ``[B, L_s]`` / ``[B, L_t]`` int64, the token each row of the logits
  predicts (the next input id for a causal LM, the input id itself otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from kd_lightning.core.tokens import Targets

CONTEXT_NAMES = (
    "index",
    "dataset_size",
    "dataset_labels",
    "teacher_mask",
    "student_groups",
    "teacher_groups",
    "student_tokens",
    "teacher_tokens",
)
TOKEN_CONTEXT = frozenset(CONTEXT_NAMES[3:])
"""Names only a batch of token sequences can supply."""


def context_names(loss: object) -> tuple[str, ...]:
    """The names ``loss.batch_context`` declares, checked against :data:`CONTEXT_NAMES`.

    Example:
        >>> class Banked:
        ...     batch_context = ("index", "dataset_size")
        >>> context_names(Banked())
        ('index', 'dataset_size')
    """
    names = getattr(loss, "batch_context", ())
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise TypeError(
            f"expected {type(loss).__name__}.batch_context to be a tuple of names but got {names!r}; e.g. "
            f"batch_context = ('index', 'dataset_size')."
        )
    unknown = [name for name in names if name not in CONTEXT_NAMES]
    if unknown:
        raise ValueError(
            f"{type(loss).__name__}.batch_context names {unknown}, which no batch supplies; the names a loss may ask "
            f"for are {list(CONTEXT_NAMES)} (kd_lightning.core.context)."
        )
    return tuple(names)


def predicted_tokens(input_ids: Tensor | None, causal: bool) -> Tensor | None:
    """The token each row of the logits predicts: ``input_ids[t + 1]`` at ``t`` for a causal LM (0 at the last row),
    else ``input_ids``.

    Example:
        >>> predicted_tokens(torch.tensor([[5, 6, 7]]), causal=True).tolist()
        [[6, 7, 0]]
    """
    if input_ids is None or not causal:
        return input_ids
    rows = torch.zeros_like(input_ids)
    rows[:, :-1] = input_ids[:, 1:]
    return rows


def _row_groups(groups: Tensor, causal: bool) -> Tensor:
    """Span groups per row of the logits (the span of the token the row predicts), ``-1`` where none."""
    if not causal:
        return groups.long()
    rows = torch.full_like(groups, -1, dtype=torch.long)
    rows[:, :-1] = groups[:, 1:]
    return rows


def _complete(rows: Tensor, kept: Tensor, size: int) -> Tensor:
    """``[B, size]`` bool: the groups all of whose rows are kept (and that have a row at all)."""
    every = torch.zeros(rows.shape[0], size + 1, dtype=torch.long, device=rows.device)
    chosen = torch.zeros_like(every)
    index = torch.where(rows >= 0, rows, size)
    every.scatter_add_(1, index, torch.ones_like(index))
    chosen.scatter_add_(1, torch.where(kept, index, size), kept.long())
    return ((every == chosen) & (every > 0))[:, :size]


def aligned_groups(student: Targets, teacher: Targets, rule: str) -> tuple[Tensor, Tensor] | None:
    """``(student_groups, teacher_groups)`` per row of each side's logits (see the module docstring), or ``None``
    when the batch carries no span groups."""
    s_groups, t_groups = student.context.get("span_groups"), teacher.context.get("span_groups")
    if s_groups is None or t_groups is None:
        return None
    s_rows, t_rows = _row_groups(s_groups, student.causal), _row_groups(t_groups, teacher.causal)
    s_kept, t_kept = student.mask(rule) & (s_rows >= 0), teacher.mask(rule) & (t_rows >= 0)
    # a group has a token on each side, so its number is below both lengths: a size known without reading the device
    size = max(s_groups.shape[1], t_groups.shape[1], 1)
    complete = _complete(s_rows, s_kept, size) & _complete(t_rows, t_kept, size)

    def keep(rows: Tensor, kept: Tensor) -> Tensor:
        whole = complete.gather(1, rows.clamp(min=0)) & kept
        return torch.where(whole, rows, -1)

    return keep(s_rows, s_kept), keep(t_rows, t_kept)


def resolve_context(names: tuple[str, ...], target: Targets, rule: str | None) -> dict[str, Any]:
    """The keyword arguments ``names`` of a loss for one batch (``rule``: its token positions rule, or ``None`` for a
    loss of whole samples)."""
    if not names:
        return {}
    context: Mapping[str, Any] = target.context
    teacher: Targets | None = context.get("teacher")
    resolved: dict[str, Any] = {}
    groups = None
    for name in names:
        if name in ("index", "dataset_size", "dataset_labels"):
            resolved[name] = context.get(name)
        elif rule is None or not target.sequence:
            resolved[name] = None
        elif name == "teacher_mask":
            resolved[name] = None if teacher is None else teacher.mask(rule)
        elif name in ("student_groups", "teacher_groups"):
            if groups is None and teacher is not None:
                groups = aligned_groups(target, teacher, rule) or (None, None)
            resolved[name] = None if groups is None else groups[name == "teacher_groups"]
        elif name == "student_tokens":
            resolved[name] = predicted_tokens(context.get("input_ids"), target.causal)
        else:  # teacher_tokens
            resolved[name] = (
                None if teacher is None else predicted_tokens(teacher.context.get("input_ids"), teacher.causal)
            )
    return resolved
