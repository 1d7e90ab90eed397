"""A ``DataLoader`` whose position inside the epoch is checkpointed, for exact mid-epoch resume.

Lightning saves the ``state_dict()`` of every training loader that has ``state_dict``/``load_state_dict`` in
``checkpoint["loops"]`` and loads it into the new loader before the resumed fit iterates. A plain ``DataLoader`` has
neither, and its ``RandomSampler`` draws a fresh seed from the global torch RNG for every epoch, so a resumed run
starts the interrupted epoch again in another order. :class:`ResumableDataLoader` fixes both:

* the order of epoch ``e`` is a permutation drawn from ``(seed, e)`` alone (:class:`EpochSampler`), never from the
  global RNG, so it is the same in the interrupted and the resumed process;
* its state is ``(seed, epoch, batches consumed in that epoch)``; after ``load_state_dict`` the next iteration yields
  exactly the remaining batches of that epoch, without loading the skipped ones (their indices are dropped before
  any sample is read, also with worker processes);
* worker processes get seeds derived from ``(seed, epoch)`` (the loader's own ``generator``), not from the global RNG;
* a dataset with a ``set_epoch(epoch)`` method is told the epoch before every iteration, so it can derive per-sample
  randomness (augmentation) from ``(seed, epoch, index)`` with :func:`derive_seed`, which makes every augmented
  view replayable (see :class:`~kd_lightning.data.digits.DigitsDataset`).

Use it in your own datamodule in place of the training ``DataLoader`` (validation and test loaders need no state)::

    def train_dataloader(self):
        return ResumableDataLoader(self.train_set, batch_size=64, shuffle=True, num_workers=4)

``seed=None`` takes the run's seed (``seed_everything``, i.e. ``PL_GLOBAL_SEED``; 0 when unset), so the order
changes with the run's seed and is the same on every DDP process. Under DDP Lightning wraps the sampler in its
``DistributedSamplerWrapper`` (every process gets its shard of the same permutation) and re-creates the loader with
it; the skip then counts each process's own batches. Exactness also needs the rest of the run to be restored: the
global RNG states are saved by :mod:`kd_lightning.modules._run_state` (the modules of this package do it in their
checkpoint hooks). Datasets that draw augmentation from the global RNG are exact only with ``num_workers=0``; with
workers, derive it from the sample and the epoch as ``DigitsDataset`` does.
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler

STATE_FORMAT = "kd_lightning.ResumableDataLoader/1"
"""Marks a loader state in ``checkpoint["loops"]`` (:mod:`kd_lightning.modules._run_state` corrects its position)."""
_MASK64 = (1 << 64) - 1
_WORKER_SEED_KEY = 0x5EED
"""Third key of the seed of the loader's generator (worker seeds), distinct from the permutation's two keys."""


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (splitmix64), e.g. ``derive_seed(seed, epoch, index)``.

    Nearby keys give unrelated seeds, so ``torch.Generator().manual_seed(derive_seed(seed, epoch, index))`` is an
    independent stream per sample and epoch that does not depend on what else the process has drawn.

    Example:
        >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
        True
    """
    state = 0
    for key in keys:
        state = _splitmix64(state ^ (int(key) & _MASK64))
    return state >> 1


def run_seed() -> int:
    """The run's seed: ``PL_GLOBAL_SEED`` (set by ``seed_everything``, inherited by DDP processes), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochSampler(Sampler[int]):
    """Every index of ``data_source`` once per epoch, in an order that depends only on ``(seed, epoch)``.

    Unlike ``RandomSampler`` it never touches the global RNG; ``set_epoch`` (called by Lightning before every epoch)
    selects the permutation. The order is computed when iteration starts.

    Args:
        data_source: the dataset (only its length is used).
        seed: seed of the permutations.
        shuffle: ``False`` yields ``0, 1, ..., N - 1`` every epoch.

    Example:
        >>> sampler = EpochSampler(range(5), seed=3)
        >>> first = list(sampler)
        >>> sampler.set_epoch(1)
        >>> sorted(list(sampler)) == sorted(first) and list(sampler) != first
        True
    """

    def __init__(self, data_source: Sized, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples, self.seed, self.shuffle = len(data_source), int(seed), shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        """The indices of ``epoch``, in order."""
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.epoch))

    def __len__(self) -> int:
        return self.num_samples


class _SkipFirst:
    """The loader's index sampler without its first ``loader._skip`` batches (read at every ``iter``).

    torch's iterators call ``iter`` on it once or twice while they are created (and again on every pass of persistent
    workers); the loader sets ``_skip`` only around the creation.
    """

    def __init__(self, index_sampler: Iterable, loader: ResumableDataLoader) -> None:
        self.index_sampler, self.loader = index_sampler, loader

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.index_sampler), self.loader._skip, None)

    def __len__(self) -> int:
        return len(self.index_sampler)


class _Positioned(Iterator[Any]):
    """One pass over the loader; the epoch starts (position, seeds, workers) at the first ``next``.

    Starting late makes ``iter(loader)`` followed by ``sampler.set_epoch(e)`` select epoch ``e``, as with
    ``RandomSampler``/``DistributedSampler`` (Lightning creates the iterator of a resumed run before it sets the epoch).
    """

    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader = loader
        self.iterator: Iterator[Any] | None = None

    def __next__(self) -> Any:
        if self.iterator is None:
            self.iterator = self.loader._start_pass(self)
        batch = next(self.iterator)
        if self.loader.active_pass() is self:
            self.loader._batches += 1
        return batch


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` with ``state_dict``/``load_state_dict``: its epoch and how many batches of it were consumed.

    With ``shuffle=True`` and no ``sampler`` it samples with :class:`EpochSampler` (order from ``(seed, epoch)``);
    an explicit ``sampler`` is used as given (its ``epoch`` attribute, when it has one, is the loader's epoch). Every
    other argument is ``DataLoader``'s; ``len()``, ``batch_size`` and Lightning's DDP sampler injection work as usual.

    Args:
        dataset: a map-style dataset; if it has ``set_epoch(epoch)`` it is called before every epoch.
        batch_size: samples per batch.
        shuffle: sample in a seeded, epoch-dependent random order.
        sampler: a sampler to use instead (then ``shuffle`` must be ``False``).
        seed: seed of the order and of the worker seeds; ``None`` is the run's seed (:func:`run_seed`).
        **kwargs: the other ``DataLoader`` arguments. ``persistent_workers=True`` is refused for datasets with
            ``set_epoch`` (the workers would keep the dataset copy of the first epoch). Without a ``generator`` the
            worker seeds are drawn from a generator seeded with ``(seed, epoch)``.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler | Iterable | None = None,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.seed = run_seed() if seed is None else int(seed)
        if shuffle and sampler is None:
            sampler, shuffle = EpochSampler(dataset, seed=self.seed), None
        if kwargs.get("persistent_workers") and callable(getattr(dataset, "set_epoch", None)):
            raise ValueError(
                f"expected persistent_workers=False with a dataset that has set_epoch ({type(dataset).__name__}) but "
                f"got persistent_workers=True; persistent workers keep the dataset copy of the first epoch, so the "
                f"epoch would not reach them."
            )
        self._user_generator = kwargs.get("generator")
        self._skip = 0
        self._batches = 0
        self._epoch = 0
        self._pending: tuple[int, int] | None = None
        self._active: weakref.ref[_Positioned] | None = None  # weak: a dropped pass frees its workers at once
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, **kwargs)

    @property
    def _index_sampler(self) -> _SkipFirst:
        # torch's DataLoader iterators draw their batches of indices from this; skipping here reads no samples.
        return _SkipFirst(super()._index_sampler, self)

    @property
    def epoch(self) -> int:
        """The epoch of the current pass: the sampler's ``epoch`` when it has one (Lightning sets it), else the own."""
        return int(getattr(self.sampler, "epoch", self._epoch))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next pass (forwarded to the samplers, like Lightning's own ``set_epoch`` calls)."""
        self._epoch = int(epoch)
        samplers = {id(s): s for s in (self.sampler, getattr(self.batch_sampler, "sampler", None)) if s is not None}
        for sampler in samplers.values():
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(self._epoch)

    def __iter__(self) -> Iterator[Any]:
        return _Positioned(self)

    def active_pass(self) -> _Positioned | None:
        """The pass that counts the consumed batches (the latest started one), if it is still alive."""
        return self._active() if self._active is not None else None

    def _start_pass(self, owner: _Positioned) -> Iterator[Any]:
        """Begin a pass: the saved position if a state was loaded, else the sampler's epoch from its start."""
        if self._pending is not None:
            (epoch, skip), self._pending = self._pending, None
            self.set_epoch(epoch)
        else:
            epoch, skip = self.epoch, 0
        self._active, self._epoch, self._batches, self._skip = weakref.ref(owner), epoch, skip, skip
        set_dataset_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_dataset_epoch):
            set_dataset_epoch(epoch)
        if self._user_generator is None:
            self.generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, _WORKER_SEED_KEY))
        try:
            return super().__iter__()
        finally:
            self.generator, self._skip = self._user_generator, 0

    def state_dict(self) -> dict[str, Any]:
        """``{"format", "seed", "epoch", "batches"}``: the epoch of the current pass and the batches it yielded.

        Lightning saves it in ``checkpoint["loops"]``; :func:`kd_lightning.modules._run_state.capture` replaces
        ``batches`` with the number of batches the trainer has finished (and moves a finished epoch to the next one).
        """
        epoch, batches = self._pending or (self._epoch if self._active is not None else self.epoch, self._batches)
        return {"format": STATE_FORMAT, "seed": self.seed, "epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The next pass continues epoch ``state_dict["epoch"]`` after its first ``state_dict["batches"]`` batches."""
        if state_dict.get("format") != STATE_FORMAT:
            raise ValueError(
                f"expected a {type(self).__name__} state with format {STATE_FORMAT!r} but got keys "
                f"{sorted(state_dict)}; the checkpoint was saved with another training loader."
            )
        if int(state_dict["seed"]) != self.seed:
            rank_zero_warn(
                f"resuming with data seed {self.seed} but the checkpoint was saved with seed {state_dict['seed']}: "
                f"the resumed run's data order differs from the interrupted one; run with the same seed_everything."
            )
        self._pending = int(state_dict["epoch"]), int(state_dict["batches"])
