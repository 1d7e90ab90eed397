"""Import paths: the object at a dotted ``class_path``, the nearest importable path to a misspelled one, and the init
parameters a class accepts."""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import sys
import types
from typing import Any


def import_path(path: str) -> Any:
    """The object at a dotted import path (``kd_lightning.losses.KDLoss``), or ``None``."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        except Exception:  # a module that fails on import is not a candidate
            return None
        for part in parts[split:]:
            target = getattr(target, part, None)
            if target is None:
                return None
        return target
    return None


FAMILIAR_MODULES = ("torch.optim", "torch.optim.lr_scheduler")
"""Modules whose classes a config names by ``class_path`` outside this library: optimizers and schedulers."""


def nearest_import_path(path: str) -> str | None:
    """The nearest importable dotted path to a misspelled one.

    First, the class of a :data:`FAMILIAR_MODULES` module that the last segment names exactly (case aside) under
    another module (``torch.optim.CosineAnnealingLR`` -> ``torch.optim.lr_scheduler.CosineAnnealingLR``); then the
    path fixed one segment after another (module, submodule, class); then the nearest class of those modules.

    Example:
        >>> nearest_import_path("torch.optim.AdamWW"), nearest_import_path("torch.optim.CosineAnnealingLR")
        ('torch.optim.AdamW', 'torch.optim.lr_scheduler.CosineAnnealingLR')
    """
    name = path.rpartition(".")[2]
    familiar = _familiar_classes()
    exact = [full for full in familiar if full.rpartition(".")[2].lower() == name.lower()]
    if exact and path not in exact:
        return exact[0]
    fixed = _fixed_segments(path)
    if fixed is not None:
        return fixed
    nearest = difflib.get_close_matches(name, [full.rpartition(".")[2] for full in familiar], n=1, cutoff=0.75)
    return next((full for full in familiar if nearest and full.rpartition(".")[2] == nearest[0]), None)


def _familiar_classes() -> list[str]:
    """``module.Class`` of every public class of :data:`FAMILIAR_MODULES`."""
    found: list[str] = []
    for module in FAMILIAR_MODULES:
        target = import_path(module)
        found += [
            f"{module}.{name}"
            for name, value in vars(target or object).items()
            if inspect.isclass(value) and not name.startswith("_") and value.__module__.startswith(module)
        ]
    return found


def _fixed_segments(path: str) -> str | None:
    """The path with each segment replaced by the nearest existing one, or ``None``."""
    parts = path.split(".")
    fixed: list[str] = []
    target: Any = None
    for part in parts:
        candidates = _children(target, fixed)
        if part not in candidates:
            nearest = difflib.get_close_matches(part, list(candidates), n=1, cutoff=0.6)
            if not nearest:
                return None
            part = nearest[0]
        fixed.append(part)
        target = import_path(".".join(fixed))
        if target is None:
            return None
    return ".".join(fixed) if fixed != parts else None


def _children(target: Any, fixed: list[str]) -> set[str]:
    """Public classes, functions and modules of ``target``, plus its submodules (top-level modules for ``None``)."""
    if target is None:
        return {module.name for module in pkgutil.iter_modules()} | set(sys.modules)
    names = {
        name
        for name, value in vars(target).items()
        if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value) or inspect.ismodule(value))
    }
    if isinstance(target, types.ModuleType) and hasattr(target, "__path__"):
        names |= {module.name for module in pkgutil.iter_modules(target.__path__)}
    return names


def init_parameters(target: Any) -> list[str]:
    """Names a ``class_path`` accepts as ``init_args``: its ``__init__`` parameters, and its bases' for ``**kwargs``."""
    names: list[str] = []
    if inspect.isclass(target):
        callables = [cls.__init__ for cls in inspect.getmro(target) if "__init__" in vars(cls)]
    else:
        callables = [target]
    for function in callables:
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            break
        names += [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(names))
