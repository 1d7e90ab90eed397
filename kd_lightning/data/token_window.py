"""``TokenWindowLoader``: a resumable training loader whose token batches carry the token counts of their whole
gradient-accumulation window, so per-token losses are exact means over the effective batch.

Lightning divides each micro-batch's loss by ``accumulate_grad_batches``; a token loss divided by its own micro-batch's
token count then weighs the tokens of differently padded micro-batches unequally. The loader reads a window's batches
together and attaches :data:`~kd_lightning.core.tokens.WINDOW_COUNTS` to each; the Lightning modules turn them into the
normalisers of :class:`~kd_lightning.core.tokens.TokenTargets` (see :mod:`kd_lightning.modules._sequences`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from kd_lightning.core.tokens import WINDOW_COUNTS, token_counts
from kd_lightning.data.resumable import ResumableDataLoader, _Positioned


def _batch_counts(batch: Any) -> Tensor:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise TypeError(
            f"expected dict batches with input_ids (and attention_mask, labels) from a TokenWindowLoader but got "
            f"{type(batch).__name__}; give it a collate_fn that returns such dicts (TokenCollator), or use "
            f"ResumableDataLoader for other batches."
        )
    return token_counts(batch.get("labels"), batch.get("attention_mask"), tuple(batch["input_ids"].shape[:2]))


def add_window_counts(batches: Sequence[Mapping[str, Tensor]]) -> None:
    """Set ``batch[WINDOW_COUNTS]`` of every batch to the sum of :func:`~kd_lightning.core.tokens.token_counts`."""
    total = torch.stack([_batch_counts(batch) for batch in batches]).sum(0)
    for batch in batches:
        batch[WINDOW_COUNTS] = total.clone()


class _WindowPass(_Positioned):
    """One pass of a :class:`TokenWindowLoader`: reads the batches of a window together, then yields them one by one.

    ``loader._batches`` counts the batches yielded (not the ones read ahead), so ``state_dict`` stays the consumer's
    position; the epoch position of the next batch read is :attr:`position`.
    """

    def __init__(self, loader: TokenWindowLoader) -> None:
        super().__init__(loader)
        self.ready: deque[Any] = deque()
        self.position = 0
        self.exhausted = False

    def _read(self) -> Any:
        if self.exhausted:
            raise StopIteration
        if self.iterator is None:
            self.iterator = self.loader._start_pass(self)
            self.position = self.loader._batches  # the resumed position (0 at an epoch's start)
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.exhausted = True
            raise
        self.position += 1
        return batch

    def _read_window(self) -> list[Any]:
        """The batches from the next one to the end of its window (batch ``j`` of the epoch is in ``j // window``)."""
        batches = [self._read()]
        window = self.loader.window
        end = ((self.position - 1) // window + 1) * window
        while self.position < end:
            try:
                batches.append(self._read())
            except StopIteration:
                break
        return batches

    def __next__(self) -> Any:
        if not self.ready:
            batches = self._read_window()
            add_window_counts(batches)
            self.ready.extend(batches)
        batch = self.ready.popleft()
        if self.loader.active_pass() is self:
            self.loader._batches += 1
        return batch


class TokenWindowLoader(ResumableDataLoader):
    """A :class:`ResumableDataLoader` whose dict batches carry the token counts of their gradient-accumulation window.

    It yields the same batches, but each gets ``batch[WINDOW_COUNTS]``
    (:data:`~kd_lightning.core.tokens.WINDOW_COUNTS`): the sum of :func:`~kd_lightning.core.tokens.token_counts`
    over the batches of its window, read ahead. Windows follow Lightning's accumulation: batch ``j`` of the epoch
    belongs to window ``j // window`` (also after a mid-epoch resume, whose first window is then shortened), and the
    last window of an epoch may be shorter. With ``limit_train_batches`` not a multiple of ``window``, the trainer's
    last window ends earlier than the loader's.

    ``len()``, ``state_dict()`` (``batches``: the batches yielded, not those read ahead) and Lightning's DDP sampler
    injection (it re-creates the loader from its attributes, ``window`` included) work as for
    :class:`ResumableDataLoader`.

    Args:
        dataset: a map-style dataset whose collated batches are dicts with ``input_ids`` ``[B, L]`` and optionally
            ``attention_mask`` and ``labels`` (:class:`TokenCollator`).
        batch_size: samples per batch.
        shuffle: sample in a seeded, epoch-dependent random order.
        sampler: a sampler to use instead (then ``shuffle`` must be ``False``).
        seed: seed of the order; ``None`` is the run's seed.
        window: batches per window: the trainer's ``accumulate_grad_batches``.
        **kwargs: the other ``DataLoader`` arguments.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler | Iterable | None = None,
        *,
        seed: int | None = None,
        window: int = 1,
        **kwargs: Any,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"expected window a positive integer (the trainer's accumulate_grad_batches) but got {window!r}."
            )
        self.window = window
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, seed=seed, **kwargs)

    def __iter__(self) -> _WindowPass:
        return _WindowPass(self)
