"""State dicts on disk: read, matched to a network (wrapper prefixes stripped), compared and loaded strictly.

Weights come from a Lightning checkpoint (``.ckpt``, e.g. of a :class:`~kd_lightning.Classifier`) or a state-dict file
(``.pt``/``.pth``/``.bin``/``.safetensors``). Prefixes added by wrappers (``student.``, ``network.``, ``model.``,
``module.``, ``teacher.``, ``_orig_mod.``) are stripped to match the architecture, and loading stays strict: a
checkpoint of another architecture is an error that lists the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.networks import mark_pretrained
from kd_lightning.files import read as files

WRAPPER_PREFIXES = ("student.", "network.", "model.", "module.", "teacher.", "net.")


def read_state_dict(path: str | Path, what: str = "teacher weights") -> dict[str, Tensor]:
    """Read the tensors of a checkpoint or state-dict file (``weights_only``: no code is unpickled).

    ``.safetensors``, ``torch.save`` state dicts and Lightning checkpoints (their ``state_dict``) are read by
    :func:`kd_lightning.files.read_tensors`: a missing, empty, truncated, corrupt or unsafe file is a
    :class:`~kd_lightning.files.CheckpointFileError` (``FileNotFoundError`` when missing) that names the file, the
    fault and how to make a good one (``kd-lightning fit --config configs/digits/teacher.yaml``).
    """
    return files.read_tensors(path, what=what)


def read_checkpoint(path: str | Path, what: str = "checkpoint", **kwargs: Any) -> dict[str, Any]:
    """Read a Lightning checkpoint with ``weights_only=True`` (see :func:`kd_lightning.files.read_checkpoint`)."""
    return files.read_checkpoint(path, what=what, **kwargs)


def strip_prefixes(state_dict: Mapping[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Return the view of ``state_dict`` whose keys best match ``model_keys``, removing one wrapper prefix.

    ``_orig_mod.`` (added by ``torch.compile``) is removed wherever it appears. When a checkpoint holds several
    networks (``student.*`` and ``teacher.*``), the prefix that matches the most model keys wins.
    """
    cleaned = {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}
    candidates = [cleaned]
    for prefix in WRAPPER_PREFIXES:
        stripped = {k[len(prefix) :]: v for k, v in cleaned.items() if k.startswith(prefix)}
        if stripped:
            candidates.append(stripped)
    return max(candidates, key=lambda candidate: (len(model_keys & candidate.keys()), -len(candidate)))


def describe_keys(keys: list[str], limit: int = 8) -> str:
    """The first ``limit`` names, then how many there are in all."""
    shown = ", ".join(keys[:limit])
    return f"{shown}{f' ... ({len(keys)} in all)' if len(keys) > limit else ''}"


def key_mismatches(
    model_state: Mapping[str, Any], state_dict: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> tuple[list[str], list[str], list[str]]:
    """Keys of ``model_state`` missing from ``state_dict``, keys it does not have, and tensors of other shapes.

    Keys starting with a prefix in ``skip`` are not compared; entries that are not tensors (extra state) have no shape.
    """

    def compared(keys: Any) -> list[str]:
        return sorted(key for key in keys if not key.startswith(skip))

    mis_shaped = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(model_state[key].shape)}"
        for key in compared(model_state.keys() & state_dict.keys())
        if isinstance(state_dict[key], Tensor)
        and isinstance(model_state[key], Tensor)
        and state_dict[key].shape != model_state[key].shape
    ]
    missing, unexpected = model_state.keys() - state_dict.keys(), state_dict.keys() - model_state.keys()
    return compared(missing), compared(unexpected), mis_shaped


def load_weights(model: nn.Module, path: str | Path, role: str = "teacher") -> nn.Module:
    """Load ``path`` into ``model`` strictly, with an error that names every key that does not fit; the network is
    marked as trained, from ``path`` (:func:`~kd_lightning.core.networks.mark_pretrained`)."""
    model_state = model.state_dict()
    state_dict = strip_prefixes(read_state_dict(path, what=f"{role} weights"), set(model_state))
    missing, unexpected, mis_shaped = key_mismatches(model_state, state_dict)
    if missing or unexpected or mis_shaped:
        problems = [
            f"missing keys: {describe_keys(missing)}" if missing else "",
            f"unexpected keys: {describe_keys(unexpected)}" if unexpected else "",
            f"shape mismatches: {describe_keys(mis_shaped, 4)}" if mis_shaped else "",
        ]
        raise ValueError(
            f"{role} checkpoint {str(path)!r} does not fit {type(model).__name__}: "
            f"{'; '.join(p for p in problems if p)}. Check that the {role}'s class_path and init_args "
            f"(e.g. width, num_classes) are those the checkpoint was trained with."
        )
    model.load_state_dict(state_dict, strict=True)
    return mark_pretrained(model, str(path))


def state_digest(network: nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes and values): whether a teacher's weights changed."""
    digest = hashlib.sha256()
    for key, value in sorted(network.state_dict().items()):
        if hasattr(value, "full_tensor"):  # a DTensor (an FSDP2-sharded teacher): gathered, by every process
            value = value.full_tensor()
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def first_nonfinite(state_dict: Mapping[str, Tensor]) -> str | None:
    """``"key (3 of 64 values are NaN/inf)"`` for the first tensor holding NaN or inf, ``None`` if all are finite."""
    for key, value in state_dict.items():
        if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return f"{key!r} ({bad} of its {value.numel()} values are NaN/inf)"
    return None
