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


COUNTS = ("skipped", "bad_losses", "counter", "epoch_counter")
"""The device counters, one ``long`` vector: optimizer steps zeroed (with those of the checkpoint resumed),
micro-batches with a non-finite loss, optimizer steps seen, epochs started."""
HEAD = ("step", "epoch", "batch")
"""Where the first non-finite micro-batch was: the head of the record vector (then one flag per checked tensor)."""


def _floating(values: Any) -> list[Tensor]:
    """The floating-point tensors of ``values`` (a tensor, a dict or a list of them), detached."""
    tensors = values.values() if isinstance(values, Mapping) else values if isinstance(values, list) else [values]
    return [t.detach() for t in tensors if isinstance(t, Tensor) and t.is_floating_point()]


class NonFiniteWatch:
    """The device-side record of one module's non-finite losses (see the module docstring).

    Per micro-batch a handful of device ops (one ``isfinite`` over the stacked losses and the largest magnitudes of
    the inputs and outputs, ``torch._foreach_norm(ord=inf)``: finite exactly when every element is); per optimizer
    step one ``_foreach_norm`` of the gradients and one ``masked_fill_`` per gradient. The record of the first bad
    micro-batch is one vector, ``[step, epoch, batch, flag per loss component, flag per checked tensor]``, whose
    layout (:attr:`layout`) is kept on the host; a micro-batch with another layout (other components, other outputs)
    counts but does not replace the record.
    """

    def __init__(self) -> None:
        self.device_state: dict[str, Tensor] = {}
        self.names: list[str] | None = None
        self.layout: tuple[int, ...] | None = None
        self.window_ok: Tensor | None = None
        self.reported = 0
        self.loaded = 0

    def _state(self, like: Tensor) -> dict[str, Tensor]:
        if not self.device_state or self.device_state["counts"].device != like.device:
            counts = torch.zeros(len(COUNTS), dtype=torch.long, device=like.device)
            counts[0] = self.loaded  # before the fit's first step: a host-to-device write, not a read
            self.device_state = {"counts": counts, "grads": torch.ones((), dtype=torch.bool, device=like.device)}
            self.layout = None
        return self.device_state

    # ----------------------------------------------------------------- per micro-batch, in training_step
    def observe(
        self, loss: Tensor, losses: Mapping[str, Tensor], parts: Mapping[Any, Batch], outputs: Any, batch_idx: int
    ) -> Tensor:
        """Record the micro-batch's finiteness on the device; returns its device bool ``finite``."""
        state = self._state(loss)
        counts = state["counts"]
        student, teacher = outputs if outputs is not None else (None, None)
        inputs = [value for part in parts.values() for value in _values(part.inputs)]
        groups = [_floating(values) if values is not None else [] for values in (inputs, teacher, student)]
        tensors = [tensor for group in groups for tensor in group]
        scalars = torch.stack([loss.detach(), *(value.detach() for value in losses.values())]).float()
        if tensors:
            largest = torch.stack(torch._foreach_norm(tensors, float("inf"))).float()
            flags = torch.isfinite(torch.cat([scalars, largest]))
        else:
            flags = torch.isfinite(scalars)
        finite = flags[0]
        bad = ~finite
        first = bad & (counts[1] == 0)
        counts[1] += bad
        names = list(losses)
        if self.names is None:
            self.names = names
        layout = (len(names), *(len(group) for group in groups))
        if names == self.names and self.layout in (None, layout):
            self.layout = layout
            where = torch.cat([counts[2:4], torch.full((1,), batch_idx, dtype=torch.long, device=counts.device)])
            current = torch.cat([where, flags[1:].long()])
            record = state.get("record")
            if record is None:
                record = torch.cat([where.new_full((len(HEAD),), -1), flags.new_ones(len(flags) - 1, dtype=torch.long)])
            state["record"] = torch.where(first, current, record)
        self.window_ok = finite if self.window_ok is None else self.window_ok & finite
        return finite

    # ----------------------------------------------------------------- per optimizer step
    def zero_if_not_finite(self, parameters: list[Tensor]) -> None:
        """Before the optimizer step: zero every gradient when the window had a non-finite loss or gradient."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            self.window_ok = None
            return
        norms = [_whole(norm) for norm in torch._foreach_norm(grads)]  # sharded (FSDP2): one norm of the whole
        state = self._state(norms[0])
        counts = state["counts"]
        grads_ok = torch.isfinite(torch.stack(norms)).all()
        window_ok = self.window_ok if self.window_ok is not None else grads_ok.new_ones(())
        not_ok = ~_all_ranks(grads_ok & window_ok)
        first_grads = ~grads_ok & window_ok  # gradients overflowed with finite losses
        state["grads"] = torch.where(first_grads & (counts[0] == self.loaded), ~first_grads, state["grads"])
        for grad in grads:
            _local(grad).masked_fill_(not_ok, 0.0)
        counts[0] += not_ok
        counts[2] += 1
        self.window_ok = None

    def epoch_started(self) -> None:
        if self.device_state:
            self.device_state["counts"][3] += 1

    # ----------------------------------------------------------------- host reads: logging steps, epoch ends
    @property
    def skipped(self) -> int:
        """Optimizer steps zeroed so far (a host read: logging steps, epoch ends and checkpoints only)."""
        return int(self.device_state["counts"][0]) if self.device_state else self.loaded

    def record(self) -> dict[str, Tensor]:
        """The record unpacked by name (device tensors): ``step``, ``epoch``, ``batch``, ``components`` (one flag per
        loss component), ``inputs``/``teacher``/``student`` (all their tensors finite), ``grads``, ``bad_losses``."""
        state = self.device_state
        if not state:
            return {}
        unpacked = {"bad_losses": state["counts"][1], "grads": state["grads"]}
        record = state.get("record")
        if record is None or self.layout is None:
            return {**unpacked, **{name: state["counts"].new_full((), -1) for name in HEAD}}
        unpacked.update(zip(HEAD, record[: len(HEAD)], strict=True))
        flags = record[len(HEAD) :].bool()
        components, *sizes = self.layout
        unpacked["components"] = flags[:components]
        offset = components
        for name, size in zip(FLAGS, sizes, strict=True):
            if size:
                unpacked[name] = flags[offset : offset + size].all()
            offset += size
        return unpacked

    def report(self, module: Any) -> int:
        """Read the count; on new zeroed steps stop (``on_nonfinite: stop``) or warn and log them (``skip``)."""
        count = self.skipped
        if count <= self.reported:
            return count
        self.reported = count
        message = describe(module, self.names, _shared_record(self.record()), count)
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
