"""Opt-in speed settings of the modules: compilation and ``channels_last`` (a half-precision frozen teacher is the
teacher's own setting: :class:`~kd_lightning.teachers.FrozenTeacher` ``dtype``).

* ``compile``: ``nn.Module.compile()`` on the chosen networks, in place. Unlike ``torch.compile(network)``, which
  wraps the network in an ``OptimizedModule`` (state-dict keys gain ``_orig_mod.``, and the feature taps and the
  optimizer keep pointing at the bare network, so the wrapper is silently bypassed), the network keeps its identity,
  its state-dict keys and its forward hooks: checkpoints, taps and export are unchanged.
* ``channels_last``: the networks' 4-D weights and every 4-D input batch in ``torch.channels_last`` memory format
  (faster convolutions on GPUs with tensor cores and on recent CPUs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def compiled_names(option: bool | str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The networks to compile: ``True`` -> all of ``available``; ``False``/``None`` -> none; names are checked."""
    if option is None or option is False:
        return []
    if option is True:
        return list(available)
    names = [option] if isinstance(option, str) else list(option)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(
            f"expected compile to be true, false or a list of the module's networks {list(available)} but got "
            f"{unknown}; e.g. compile: [student] (in YAML, under the model's init_args)."
        )
    return names


def compile_in_place(networks: Mapping[str, nn.Module], options: Mapping[str, Any] | None = None) -> list[str]:
    """``network.compile(**options)`` on every network not compiled yet; returns the names compiled now.

    Compilation is lazy: the first forward pass of each network (and each new input shape or mode) compiles it.
    """
    done = []
    for name, network in networks.items():
        if getattr(network, "_compiled_call_impl", None) is None:
            network.compile(**dict(options or {}))
            done.append(name)
    return done


def channels_last_tensor(x: Tensor) -> Tensor:
    """An image batch ``[B, C, H, W]`` (floating point) in ``channels_last`` memory format; other tensors unchanged."""
    if x.ndim == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def channels_last_batch(batch: Any) -> Any:
    """A batch whose 4-D floating-point tensors (images ``[B, C, H, W]``) are in ``channels_last`` memory format."""
    if isinstance(batch, Tensor):
        if batch.ndim == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(channels_last_batch(item) for item in batch)
    if isinstance(batch, dict):
        return {key: channels_last_batch(value) for key, value in batch.items()}
    return batch
