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


def nearest_import_path(path: str) -> str | None:
    """The nearest importable dotted path, fixing one segment after another (module, submodule, class)."""
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
