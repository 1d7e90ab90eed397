"""Loading a checkpoint into a module safely: the right class, the same architecture, the same teacher.

A checkpoint records the class of the module that wrote it (``checkpoint["kd_lightning"]["module_class"]``) and, for
a frozen teacher that is kept out of the checkpoint, a fingerprint of the teacher's weights. Loading through a class
that cannot rebuild the module, into networks of another architecture, or beside a teacher whose weights changed is
an error that names both sides and the fix — never a module silently missing its teacher or terms.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kd_lightning.core import moved
from kd_lightning.files.weights import describe_keys, key_mismatches

CHECKPOINT_KEY = "kd_lightning"
"""Checkpoint entry of the library's own state: the module class, run state for exact resume, fingerprints."""


def class_name(cls: type) -> str:
    """``kd_lightning.modules.offline.OfflineDistillation``: the import path stored in checkpoints."""
    return f"{cls.__module__}.{cls.__qualname__}"


def saved_class_name(checkpoint: Mapping[str, Any]) -> str | None:
    """The module class that wrote ``checkpoint``, at its current import path (``None`` for checkpoints written before
    it was recorded)."""
    ours = checkpoint.get(CHECKPOINT_KEY) or {}
    hparams = checkpoint.get("hyper_parameters") or {}
    name = ours.get("module_class") or hparams.get("_class_path")
    return moved.current_path(name) if isinstance(name, str) else None


def _accepts(cls: type, saved: str) -> bool:
    """Whether ``cls`` rebuilds checkpoints of ``saved``: the same class, a parent of it, or a class it replaces
    (``checkpoint_aliases``, e.g. a mode split out of an earlier class)."""
    short = saved.rsplit(".", 1)[-1]
    lineage = {class_name(base) for base in cls.__mro__} | {base.__qualname__ for base in cls.__mro__}
    aliases = set(getattr(cls, "checkpoint_aliases", ()))
    return saved in lineage or short in lineage or saved in aliases


def check_module_class(cls: type, checkpoint: Mapping[str, Any], path: str | Path) -> None:
    """Refuse to load ``checkpoint`` through ``cls`` unless ``cls`` is the class that wrote it or a subclass of it.

    A parent class cannot rebuild its subclass (an ``OfflineDistillation`` loaded as ``DistillationModule`` would
    lose its teacher and terms), and an unrelated class does not fit at all.
    """
    saved = saved_class_name(checkpoint)
    if saved is None or _accepts(cls, saved):
        return
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
    """State-dict prefixes of lazy adapters that have not been built yet (their keys appear only once built), and of
    hidden-state losses whose layer map's widths are not known yet (their ``widths`` and projections, built when the
    checkpoint is loaded)."""
    from kd_lightning.losses import LazyAdapter
    from kd_lightning.losses.hidden import _HiddenStateLoss

    return {
        f"{name}."
        for name, sub in module.named_modules()
        if (isinstance(sub, LazyAdapter) and not sub.is_built)
        or (isinstance(sub, _HiddenStateLoss) and sub._widths is None)
    }


def is_plain(value: Any) -> bool:
    """Whether a hyperparameter is safe to store in a checkpoint (numbers, strings, and lists/dicts of them)."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and is_plain(item) for key, item in value.items())
    return False


# ----------------------------------------------------------------- the teacher source in checkpoints
TEACHER_PREFIX = "teacher."


def save_teacher(source: Any, checkpoint: dict[str, Any]) -> None:
    """Drop a frozen source's weights from the checkpoint (they are re-read from its file on load) and keep its
    fingerprint, so a resume beside another teacher is caught."""
    if not source.in_checkpoint:
        state_dict = checkpoint["state_dict"]
        checkpoint["state_dict"] = {
            key: value for key, value in state_dict.items() if not key.startswith(TEACHER_PREFIX)
        }
    fingerprint = source.fingerprint()
    if fingerprint is not None:
        checkpoint[CHECKPOINT_KEY]["teacher_fingerprint"] = fingerprint


def load_teacher(source: Any, checkpoint: dict[str, Any], hparams: Mapping[str, Any], resuming: bool) -> None:
    """Insert a frozen source's live weights, so strict loading of the teacher-less checkpoint succeeds; a teacher
    whose weights differ from those the checkpoint was trained beside stops a resumed fit (the run would continue
    against another teacher) and is a warning when the checkpoint is only loaded."""
    if not source.in_checkpoint:
        state_dict = checkpoint["state_dict"]
        for key, value in source.state_dict().items():
            state_dict[TEACHER_PREFIX + key] = value
    saved = (checkpoint.get(CHECKPOINT_KEY) or {}).get("teacher_fingerprint")
    current = source.fingerprint()
    if saved is None or current is None or saved == current:
        return
    message = (
        f"the teacher's weights (teacher_weights={hparams.get('teacher_weights')!r}) differ from those this "
        f"checkpoint was trained with: the file was replaced or another one is given"
    )
    if resuming:
        raise ValueError(
            f"{message}; a resumed run must keep its teacher: point teacher_weights to the original file, or start "
            f"a new run without --ckpt_path."
        )
    warnings.warn(f"{message}; the student loads unchanged, teacher metrics are the new one's.", stacklevel=3)


def loading_class(cls: type, checkpoint: Mapping[str, Any]) -> type:
    """The class whose constructor rebuilds ``checkpoint`` for ``cls``: ``cls``, or the entry point the config named
    when ``cls`` replaces it (a ``SelfDistillation`` config builds a layer-wise or temporal module)."""
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if not isinstance(class_path, str):
        return cls
    module, _, name = moved.current_path(class_path).rpartition(".")
    try:
        named = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return cls
    if isinstance(named, type) and class_name(named) in set(getattr(cls, "checkpoint_aliases", ())):
        return named
    return cls


def check_loaded_class(cls: type, loaded: Any, path: str | Path) -> None:
    """Raise when loading through ``cls`` built a module of another class (an entry point may build its modes)."""
    if not isinstance(loaded, cls) and class_name(type(loaded)) not in set(getattr(cls, "checkpoint_aliases", ())):
        raise TypeError(
            f"checkpoint {str(path)!r} rebuilds a {type(loaded).__name__}, not a {cls.__name__}; load it with "
            f"{type(loaded).__name__}.load_from_checkpoint(path)."
        )
