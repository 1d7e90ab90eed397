"""Counting reads of tensor values on the host (what makes a GPU wait for its queued kernels), for the tests.

:class:`HostReads` is a ``TorchFunctionMode`` that counts every call that reads a tensor's value on the host:
``item``, ``bool()``, ``int()``, ``float()``, ``tolist``, ``cpu``, ``numpy``, ``nonzero``, ``masked_select``,
``unique``, one-argument ``where``, and indexing with a boolean tensor. :class:`CountSteadySteps` turns it on from the
start of each chosen training step to its end (the step, its backward and its optimizer step; the batch's transfer to
the device comes before and is not counted) and records where each read happened.
"""

from __future__ import annotations

import collections
import traceback
from typing import Any

import lightning as L
import torch
from torch.overrides import TorchFunctionMode

READS = {
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "item",
    "tolist",
    "cpu",
    "numpy",
    "nonzero",
    "masked_select",
    "unique",
    "unique_consecutive",
    "argwhere",
    "bincount",
}


def _boolean_index(args: tuple) -> bool:
    index = args[1] if len(args) > 1 else None
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(item, torch.Tensor) and item.dtype == torch.bool for item in items)


class HostReads(TorchFunctionMode):
    """Counts host reads of tensor values, by call site (the last frames outside torch)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        read = name in READS
        read |= name in ("__getitem__", "__setitem__") and _boolean_index(args)
        read |= name == "where" and len(args) == 1 and not kwargs
        if read:
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename][-3:]
            self.sites[f"{name} at " + " <- ".join(f"{f.filename.rsplit('/', 2)[-2:]}:{f.lineno}" for f in frames)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def count(self) -> int:
        return sum(self.sites.values())


class CountSteadySteps(L.Callback):
    """Counts host reads inside training steps ``first`` .. ``last`` (global steps, each from its
    ``on_train_batch_start`` to its ``on_train_batch_end``)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.reads = HostReads()
        self.steps = 0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.first <= trainer.global_step <= self.last:
            self.reads.__enter__()
            self.active = True

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if getattr(self, "active", False):
            self.reads.__exit__(None, None, None)
            self.active = False
            self.steps += 1
