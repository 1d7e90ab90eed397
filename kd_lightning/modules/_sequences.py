"""The targets of a batch for the objective: class labels, or the token targets of a sequence batch with the
normalisers that make token losses a mean per real token of the whole effective batch.

Lightning divides every micro-batch's loss by ``accumulate_grad_batches`` (``k``) and DDP averages gradients over the
``W`` processes. A token loss that divides its sum by ``n = N / (k * W)``, where ``N`` counts the tokens of every
micro-batch of the accumulation window on every process, therefore has the gradient of ``sum over the window / N``:
one big batch's mean per token, whatever the padding of each micro-batch. ``N`` comes from the counts a
:class:`~kd_lightning.data.token_window.TokenWindowLoader` attaches to each batch (it looks ahead over the window),
summed over the processes with one all-reduce; without them (another loader), each micro-batch is normalised by its
own count, which is exact without accumulation and DDP, and a warning says so once otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from kd_lightning.core import batch as batches
from kd_lightning.core.tokens import COUNT_KEYS, WINDOW_COUNTS, TokenTargets, token_counts

SEQUENCE_KEYS = ("input_ids", "attention_mask")


def is_sequence_batch(batch: Any) -> bool:
    """Whether ``batch`` is a dict batch of token sequences (it has ``input_ids`` or ``attention_mask``)."""
    return isinstance(batch, Mapping) and any(key in batch for key in SEQUENCE_KEYS)


def sequence_shape(batch: Mapping[str, Tensor]) -> tuple[int, int]:
    """``(B, L)`` of a sequence batch."""
    source = next(batch[key] for key in (*SEQUENCE_KEYS, "labels") if isinstance(batch.get(key), Tensor))
    return tuple(source.shape[:2])


def batch_targets(
    batch: Any, causal: bool, normalizers: Mapping[str, Tensor] | None = None
) -> Tensor | TokenTargets | None:
    """Class labels ``[B]`` (or ``None``) of a tuple or dict batch; :class:`TokenTargets` of a sequence batch."""
    labels = batches.labels_of(batch)
    if not is_sequence_batch(batch):
        return labels
    shape = sequence_shape(batch)
    return TokenTargets(
        labels=labels,
        attention_mask=batches.attention_mask_of(batch),
        causal=causal,
        normalizers=normalizers,
        shape=shape,
        device=batch["input_ids"].device if "input_ids" in batch else None,
    )


def window_normalizers(batch: Any, trainer: Any, warned: list[bool]) -> dict[str, Tensor] | None:
    """``{count key: N / (k * W)}`` for a training sequence batch (see the module docstring); ``None`` when every
    micro-batch is the whole effective batch and has no window counts (its own counts are then exact)."""
    if not is_sequence_batch(batch) or trainer is None:
        return None
    accumulate, world = int(trainer.accumulate_grad_batches), int(trainer.world_size)
    counts = batch.get(WINDOW_COUNTS)
    window = accumulate
    if counts is None:
        if accumulate == 1 and world == 1:
            return None
        if accumulate > 1 and not warned[0]:
            warned[0] = True
            rank_zero_warn(
                f"token losses are normalised by each micro-batch's own token count: with accumulate_grad_batches="
                f"{accumulate} micro-batches of different padding are weighted unequally. Use kd_lightning's "
                f"TokenWindowLoader (TextDataModule does) for the exact mean per token of the effective batch."
            )
        labels, attention = batches.labels_of(batch), batches.attention_mask_of(batch)
        counts, window = token_counts(labels, attention, sequence_shape(batch)), 1
    counts = counts.to(dtype=torch.float64, device=_device(batch))
    if world > 1:
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
    share = counts / (window * world)
    return {key: share[index].float() for index, key in enumerate(COUNT_KEYS)}


def _device(batch: Mapping[str, Tensor]) -> torch.device:
    return next(value.device for value in batch.values() if isinstance(value, Tensor))
