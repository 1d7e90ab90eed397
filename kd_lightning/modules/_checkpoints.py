"""Loading a checkpoint into a module safely: the right class, the same architecture, the same teacher.

A checkpoint records the class of the module that wrote it (``checkpoint["kd_lightning"]["module_class"]``) and, for
a frozen teacher that is kept out of the checkpoint, a fingerprint of the teacher's weights. Loading through a class
that cannot rebuild the module, into networks of another architecture, or beside a teacher whose weights changed is
an error that names both sides and the fix — never a module silently missing its teacher or terms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.files.weights import describe_keys, key_mismatches

CHECKPOINT_KEY = "kd_lightning"
"""Checkpoint entry of the library's own state: the module class, run state for exact resume, fingerprints."""


def class_name(cls: type) -> str:
    """``kd_lightning.modules.offline.OfflineDistillation``: the import path stored in checkpoints."""
    return f"{cls.__module__}.{cls.__qualname__}"


def saved_class_name(checkpoint: Mapping[str, Any]) -> str | None:
    """The module class that wrote ``checkpoint`` (``None`` for checkpoints written before it was recorded)."""
    ours = checkpoint.get(CHECKPOINT_KEY) or {}
    hparams = checkpoint.get("hyper_parameters") or {}
    return ours.get("module_class") or hparams.get("_class_path")


def check_module_class(cls: type, checkpoint: Mapping[str, Any], path: str | Path) -> None:
    """Refuse to load ``checkpoint`` through ``cls`` unless ``cls`` is the class that wrote it or a subclass of it.

    A parent class cannot rebuild its subclass (an ``OfflineDistillation`` loaded as ``DistillationModule`` would
    lose its teacher and terms), and an unrelated class does not fit at all.
    """
    saved = saved_class_name(checkpoint)
    if saved is None or saved == class_name(cls) or saved.rsplit(".", 1)[-1] == cls.__qualname__:
        return
    lineage = {class_name(base) for base in cls.__mro__} | {base.__qualname__ for base in cls.__mro__}
    if saved in lineage or saved.rsplit(".", 1)[-1] in lineage:
        return  # cls is a subclass of the saved class: it can rebuild it
    short = saved.rsplit(".", 1)[-1]
    raise TypeError(
        f"checkpoint {str(path)!r} was written by {short} ({saved}) but is being loaded as {cls.__qualname__}, which "
        f"cannot rebuild it; load it with {short}.load_from_checkpoint(path) (from the CLI: a config whose model "
        f"class_path is {saved})."
    )


def check_architecture(module: nn.Module, state_dict: Mapping[str, Tensor], source: str, lazy: set[str]) -> None:
    """Raise when ``state_dict`` does not fit ``module``'s networks, listing missing, unexpected and mis-shaped keys.

    ``lazy`` holds prefixes of adapters that are not built yet (they are built from the checkpoint's shapes), whose
    keys are not compared.
    """
    missing, unexpected, mis_shaped = key_mismatches(module.state_dict(), state_dict, skip=tuple(lazy))
    if not (missing or unexpected or mis_shaped):
        return
    parts = [
        f"missing from the checkpoint: {describe_keys(missing, 5)}" if missing else "",
        f"not in the model: {describe_keys(unexpected, 5)}" if unexpected else "",
        f"different shapes: {describe_keys(mis_shaped, 3)}" if mis_shaped else "",
    ]
    networks = sorted({key.split(".", 1)[0] for key in [*missing, *unexpected, *(m.split(":")[0] for m in mis_shaped)]})
    raise ValueError(
        f"checkpoint {source} does not fit this {type(module).__name__}: the networks differ "
        f"({'; '.join(p for p in parts if p)}). The checkpoint was trained with other {', '.join(networks)} "
        f"architectures than the config gives: use the config the run was started with (its saved config.yaml), "
        f"or start a new run without --ckpt_path."
    )


def unbuilt_adapters(module: nn.Module) -> set[str]:
    """State-dict prefixes of lazy adapters that have not been built yet (their keys appear only once built)."""
    from kd_lightning.losses import LazyAdapter

    return {f"{name}." for name, sub in module.named_modules() if isinstance(sub, LazyAdapter) and not sub.is_built}


def fingerprint(network: nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes and values), to tell whether a teacher changed."""
    digest = hashlib.sha256()
    for key, value in sorted(network.state_dict().items()):
        if hasattr(value, "full_tensor"):  # a DTensor (an FSDP2-sharded teacher): gathered, by every process
            value = value.full_tensor()
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
