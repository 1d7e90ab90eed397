"""Non-finite training losses, watched on the device: no host read in a training step, reported at logging steps.

A training step never reads a device value on the host (the GPU would wait for the step's kernels). Instead:

* every micro-batch's loss is checked on the device, and what the first non-finite one looked like is recorded
  there (its step, batch and epoch, which loss components were not finite, whether its inputs, the teacher's
  outputs and the student's outputs were finite);
* before each optimizer step, the step is **zeroed on the device** when any micro-batch of its accumulation window
  had a non-finite loss or a gradient is not finite after the backward pass (and the DDP all-reduce, so every process
  takes the same decision): every gradient is set to 0. The non-finite loss never reaches the weights; the optimizer
  still takes its step with zero gradients (plain SGD leaves the weights unchanged; momentum, weight decay and Adam's
  moments move them as for any zero gradient: the bad gradients are dropped, the step is not undone);
  ``on_nonfinite: skip`` also restores the buffers the batch changed (BatchNorm statistics);
* at the next logging step (every ``log_every_n_steps``, an epoch's first and last batch, the fit's last step; where
  the loggers read values anyway) the count is read: ``on_nonfinite: stop`` ends the run with a message naming the
  first bad step and its cause, ``skip`` warns and logs ``train/skipped_steps``. A fit whose every step was zeroed
  fails at the end of its first epoch.

The cause, in this order: inputs that hold NaN/inf (the data); a teacher whose outputs hold NaN/inf (named, with its
weights file: re-export it); a student whose weights are no longer finite (the run diverged: lower the learning
rate, clip gradients); a student whose forward gives NaN/inf on finite inputs and weights (the network); gradients
that overflowed with a finite loss; otherwise finite everything (an overflow inside a term).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from kd_lightning.core.batch import Batch
from kd_lightning.files.weights import first_nonfinite

FLAGS = ("inputs", "teacher", "student")
"""What is recorded finite or not at the first non-finite loss."""


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite (its update was not applied); raised at the next logging step."""


ROWS = 256
"""Micro-batches the device ring holds between two reads; a full ring is read (one wait) before it wraps."""


def _floating(values: Any) -> list[Tensor]:
    """The floating-point tensors of ``values`` (a tensor, a dict or a list of them), detached."""
    tensors = values.values() if isinstance(values, Mapping) else values if isinstance(values, list) else [values]
    return [t.detach() for t in tensors if isinstance(t, Tensor) and t.is_floating_point()]


class NonFiniteWatch:
    """The device-side record of one module's non-finite losses (see the module docstring).

    Per micro-batch: one ``torch._foreach_norm(ord=inf)`` over the loss, its components and the floating-point
    inputs and outputs (the largest magnitude of each: finite exactly when every element is), one ``isfinite`` of
    them stacked, and one copy of those flags into a row of a device ring (``[ROWS, flags + 1]`` bools; the row's
    step, epoch and batch are kept on the host). Per optimizer step: one ``_foreach_norm`` of the gradients, one
    ``masked_fill_`` per gradient, the zeroed-step counter and the gradients' flag in the window's last row. The ring
    is read at reports (logging steps) when the counter grew, and when it is full.
    """

    def __init__(self) -> None:
        self.device_state: dict[str, Tensor] = {}
        self.names: list[str] | None = None
        self.layout: tuple[int, ...] | None = None
        self.window_ok: Tensor | None = None
        self.rows: list[tuple[int, int, int, bool] | None] = [None] * ROWS  # step, epoch, batch, ends a window
        self.next_row = 0
        self.unread = 0  # rows written since the last read
        self.open_rows = 0  # rows of the accumulation window whose optimizer step has not come yet
        self.first_names: list[str] | None = None
        self.first: dict[str, Any] | None = None  # the first bad micro-batch read so far
        self.bad_losses = 0
        self.reported = 0
        self.loaded = 0

    def _state(self, like: Tensor) -> dict[str, Tensor]:
        state = self.device_state
        if not state or state["skipped"].device != like.device:
            self.device_state = state = {"skipped": torch.full((), self.loaded, dtype=torch.long, device=like.device)}
            self.layout, self.unread, self.open_rows = None, 0, 0
        return state

    # ----------------------------------------------------------------- per micro-batch, in training_step
    def observe(
        self,
        loss: Tensor,
        losses: Mapping[str, Tensor],
        parts: Mapping[Any, Batch],
        outputs: Any,
        batch_idx: int,
        step: int = -1,
        epoch: int = -1,
    ) -> Tensor:
        """Record the micro-batch's finiteness on the device; returns its device bool ``finite``."""
        student, teacher = outputs if outputs is not None else (None, None)
        inputs = [value for part in parts.values() for value in _values(part.inputs)]
        groups = [_floating(values) if values is not None else [] for values in (inputs, teacher, student)]
        names = list(losses)
        scalars = [loss.detach(), *(value.detach() for value in losses.values())]
        checked = scalars + [tensor for group in groups for tensor in group]
        flags = torch.isfinite(torch.stack(torch._foreach_norm(checked, float("inf"))))
        layout = (len(names), *(len(group) for group in groups))
        state = self._state(loss)
        if layout != self.layout or names != self.names or "ring" not in state:
            self.read()  # what the ring holds, read in its own layout before the ring is replaced
            self.names, self.layout = names, layout
            state["ring"] = torch.ones((ROWS, len(checked) + 1), dtype=torch.bool, device=loss.device)
        if self.unread == ROWS:
            self.read()  # a full ring: read it before its first row is overwritten (one wait per ROWS micro-batches)
        row = self.next_row
        state["ring"][row, :-1].copy_(flags)
        self.rows[row] = (step, epoch, batch_idx, False)
        self.next_row, self.unread, self.open_rows = (row + 1) % ROWS, self.unread + 1, self.open_rows + 1
        finite = flags[0]
        self.window_ok = finite if self.window_ok is None else self.window_ok & finite
        return finite

    # ----------------------------------------------------------------- per optimizer step
    def zero_if_not_finite(self, parameters: list[Tensor]) -> None:
        """Before the optimizer step: zero every gradient when the window had a non-finite loss or gradient."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            self.window_ok, self.open_rows = None, 0
            return
        norms = [_whole(norm) for norm in torch._foreach_norm(grads)]  # sharded (FSDP2): one norm of the whole
        state = self._state(norms[0])
        grads_ok = torch.isfinite(torch.stack(norms)).all()
        window_ok = self.window_ok if self.window_ok is not None else grads_ok.new_ones(())
        not_ok = ~_all_ranks(grads_ok & window_ok)
        for grad in grads:
            _local(grad).masked_fill_(not_ok, 0.0)
        state["skipped"] += not_ok
        last = (self.next_row - 1) % ROWS
        if self.window_ok is not None and self.rows[last] is not None and "ring" in state:
            state["ring"][last, -1].copy_(grads_ok)
            step, epoch, batch, _ = self.rows[last]
            self.rows[last] = (step, epoch, batch, True)
        self.window_ok, self.open_rows = None, 0

    def epoch_started(self) -> None:
        """Nothing to do on the device: the epoch of each micro-batch is kept on the host."""

    # ----------------------------------------------------------------- host reads: logging steps, epoch ends
    @property
    def skipped(self) -> int:
        """Optimizer steps zeroed so far (a host read: logging steps, epoch ends and checkpoints only)."""
        return int(self.device_state["skipped"]) if self.device_state else self.loaded

    def read(self) -> None:
        """Read the ring's unread rows (one wait): keep the first non-finite micro-batch, count the bad losses."""
        ring = self.device_state.get("ring")
        if ring is None or not self.unread or self.layout is None:
            self.unread = 0
            return
        first_row = (self.next_row - self.unread) % ROWS
        order = [(first_row + offset) % ROWS for offset in range(self.unread)]
        values = ring.cpu().tolist()
        self.unread = 0
        components, *sizes = self.layout
        for index in order:
            flags, (step, epoch, batch, ends_window) = values[index], self.rows[index]
            loss_ok, grads_ok = flags[0], flags[-1] or not ends_window
            self.bad_losses += not loss_ok
            if self.first is not None or (loss_ok and grads_ok):
                continue
            # ``grads``: the gradients overflowed although the loss was finite
            record: dict[str, Any] = {"step": step, "epoch": epoch, "batch": batch, "grads": grads_ok or not loss_ok}
            record["components"] = flags[1 : 1 + components]
            offset = 1 + components
            for name, size in zip(FLAGS, sizes, strict=True):
                if size:
                    record[name] = all(flags[offset : offset + size])
                offset += size
            self.first, self.first_names = record, list(self.names or [])

    def record(self) -> dict[str, Tensor]:
        """The first non-finite micro-batch read so far, by name, as device tensors (merged over the processes by
        :func:`_shared_record`): ``step``, ``epoch``, ``batch``, ``components``, ``inputs``/``teacher``/``student``,
        ``grads``, ``bad_losses``."""
        self.read()
        device = self.device_state["skipped"].device if self.device_state else None
        first = self.first or self._nothing_recorded()
        record = {"bad_losses": torch.tensor(self.bad_losses, device=device)}
        for name, value in first.items():
            dtype = torch.bool if isinstance(value, bool) or name == "components" else torch.long
            record[name] = torch.tensor(value, dtype=dtype, device=device)
        return record

    def _nothing_recorded(self) -> dict[str, Any]:
        """A record with every flag true, of the same keys and sizes as a real one (so that every process merges the
        same tensors in :func:`_shared_record`)."""
        record: dict[str, Any] = {"step": -1, "epoch": -1, "batch": -1, "grads": True}
        if self.layout is not None:
            components, *sizes = self.layout
            record["components"] = [True] * components
            record.update((name, True) for name, size in zip(FLAGS, sizes, strict=True) if size)
        return record

    def report(self, module: Any) -> int:
        """Read the count; on new zeroed steps stop (``on_nonfinite: stop``) or warn and log them (``skip``)."""
        count = self.skipped
        if count <= self.reported:
            # nothing was zeroed since the last read: only the rows of the open window (its optimizer step still to
            # come) may hold a bad micro-batch
            self.unread = min(self.unread, self.open_rows)
            return count
        self.reported = count
        record = _shared_record(self.record())
        message = describe(module, self.first_names or self.names, record, count)
        if module.on_nonfinite == "stop":
            raise NonFiniteLossError(message)
        warnings.warn(
            message.replace("To skip such steps instead of stopping, set", "Skipped, as set by"), stacklevel=2
        )
        module.log("train/skipped_steps", float(count))
        return count


def _distributed() -> bool:
    distributed = torch.distributed
    return distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1


def _all_ranks(ok: Tensor) -> Tensor:
    """``ok`` on every process (DDP, FSDP): the step is zeroed everywhere when it is zeroed anywhere, so the weights
    stay the same on every process. A device-side all-reduce (the host does not wait for it)."""
    if not _distributed():
        return ok
    flag = ok.to(torch.int32)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return flag.bool()


def _shared_record(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The record of the first non-finite step merged over the processes (at a report, on every process at once):
    a flag is false when it was false anywhere, the step, batch and epoch are the earliest any process recorded."""
    state = dict(state)
    if not _distributed() or not state:
        return state
    never = torch.iinfo(torch.long).max
    for name in ("step", "batch", "epoch"):
        value = torch.where(state[name] < 0, torch.full_like(state[name], never), state[name])
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        state[name] = torch.where(value == never, torch.full_like(value, -1), value)
    for name in (*FLAGS, "grads", "components"):
        if name in state:
            flag = state[name].to(torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            state[name] = flag.bool()
    bad = state["bad_losses"].clone()
    torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.SUM)
    state["bad_losses"] = bad
    return state


def _whole(tensor: Tensor) -> Tensor:
    """A plain tensor of a DTensor (FSDP2-sharded: gathered, the same on every process), else itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _local(tensor: Tensor) -> Tensor:
    """This process's shard of a DTensor (what an in-place update changes), else the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _values(inputs: Any) -> list[Tensor]:
    return list(inputs.values()) if isinstance(inputs, Mapping) else [inputs]


def describe(module: Any, names: list[str] | None, record: Mapping[str, Tensor], count: int) -> str:
    """The first non-finite step of the record (step, batch, epoch, the components ``names``) and its cause."""
    state = {name: value.tolist() if value.dim() else value.item() for name, value in record.items()}
    bad = [name for name, ok in zip(names or [], state.get("components") or [], strict=False) if not ok]
    where = f"epoch {state['epoch']}, optimizer step {state['step']}, batch {state['batch']}"
    if state["bad_losses"] == 0:
        what = f"non-finite gradients with a finite loss at {where}"
    else:
        what = f"non-finite training loss at {where}: {', '.join(bad) or 'the total'}"
    return (
        f"{what} ({count} step(s) zeroed so far); the update of such a step is not applied (its gradients are zeroed "
        f"on the device). {cause_of(module, state)} To skip such steps instead of stopping, set the module's "
        f"on_nonfinite: skip."
    )


def cause_of(module: Any, state: Mapping[str, Any]) -> str:
    """Why the first non-finite step happened, from the recorded flags and the weights now."""
    if not state.get("inputs", True):
        return "The batch's inputs held NaN/inf values: fix the data (dataset or transform)."
    if not state.get("teacher", True) and module.teacher is not None:
        return (
            f"The {module.teacher.describe()} gave NaN/inf outputs on finite inputs: fix the teacher (re-export its "
            f"weights, check teacher_normalization, or hold it in float32), not the student."
        )
    bad = first_nonfinite(module.student.state_dict())
    if bad is not None:
        return (
            f"The student's weights are no longer finite ({bad}): the run diverged; lower the learning rate or clip "
            f"gradients (trainer.gradient_clip_val)."
        )
    if not state.get("student", True):
        return (
            f"The student {type(module.student).__name__} gave NaN/inf outputs on finite inputs with finite weights: "
            f"its forward computes them (a log or division of zero, an overflow under mixed precision); fix the "
            f"network, not the data or the teacher."
        )
    if not state.get("grads", True):
        return (
            "The loss was finite but the backward pass overflowed: clip gradients (trainer.gradient_clip_val), lower "
            "the learning rate, or check a term's scale under mixed precision."
        )
    return (
        "The inputs, the teacher's outputs and the student's weights are finite: a term overflowed; lower the "
        "learning rate, clip gradients (trainer.gradient_clip_val), or check the term's inputs (e.g. a temperature or "
        "feature scale that overflows under mixed precision)."
    )


def check_some_step_taken(module: Any, steps: int, skipped: int) -> None:
    """Raise when the fit so far zeroed every one of its ``steps`` optimizer steps: it trained nothing."""
    if steps > 0 and skipped >= steps:
        raise NonFiniteLossError(
            f"every training step of this fit so far was zeroed ({skipped} non-finite step(s), on_nonfinite: skip): "
            f"the student trained on nothing, and its checkpoints hold untrained weights. The warning of the skipped "
            f"steps says why; fix that cause (with on_nonfinite: stop the run stops at the first one)."
        )
