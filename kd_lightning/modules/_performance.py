"""Opt-in speed and memory settings of the modules: a half-precision frozen teacher, compilation, ``channels_last``.

* ``teacher_dtype`` (offline mode): the frozen teacher is held in ``bfloat16`` or ``float16`` (half its weight memory);
  its inputs are cast to that dtype, it runs outside any autocast region (one precision, not a mix), and every output
  (logits, tapped features) is returned in ``float32``, so the losses see the same dtype as with a float32 teacher.
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

TEACHER_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def teacher_dtype(name: str | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``None`` or ``"float32"`` -> ``None`` (the teacher's weights unchanged)."""
    if name is None:
        return None
    if name not in TEACHER_DTYPES:
        raise ValueError(
            f"expected teacher_dtype to be one of {list(TEACHER_DTYPES)} but got {name!r}; 'bfloat16' halves the "
            f"frozen teacher's weight memory and keeps float32's range (float16 overflows above 65504)."
        )
    return None if name == "float32" else TEACHER_DTYPES[name]


def cast_input(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``x`` in ``dtype`` when it is floating point (token ids and masks are left alone)."""
    return x.to(dtype) if dtype is not None and x.is_floating_point() else x


def outputs_in_float32(outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every floating-point output of a half-precision teacher as ``float32`` (others unchanged)."""
    return {name: value.float() if value.is_floating_point() else value for name, value in outputs.items()}


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


def check_not_wrapped(network: nn.Module, argument: str) -> None:
    """Refuse a ``torch.compile(network)`` wrapper: name the in-place option that keeps keys and taps."""
    if isinstance(getattr(network, "_orig_mod", None), nn.Module):
        raise TypeError(
            f"expected {argument} to be a plain network but got a torch.compile(...) wrapper (OptimizedModule): its "
            f"state-dict keys gain '_orig_mod.' and feature taps would miss it; pass the network itself and set "
            f"compile: [{argument}] in the module's arguments (compiled in place with nn.Module.compile(), keys and "
            f"checkpoints unchanged)."
        )


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
