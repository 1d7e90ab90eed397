"""Import paths of earlier releases, resolved to where the code lives now.

Checkpoints record class paths (``hyper_parameters`` written by the CLI, the module class in
``checkpoint["kd_lightning"]``) and users' configs name them in ``class_path``; both keep working after a module
moved: :func:`install` puts a finder on ``sys.meta_path`` that answers an old module path with a module whose names
resolve to the objects where they live now (``from kd_lightning.cache import TeacherCache`` gives
``kd_lightning.teachers.cache_store.TeacherCache``; ``from kd_lightning.teacher import freeze`` gives
``kd_lightning.core.networks.freeze``). :func:`current_path` rewrites a dotted class path the same way, for comparisons.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

MOVED_MODULES: dict[str, str] = {
    "kd_lightning.batches": "kd_lightning.core.batch",
    "kd_lightning.tokens": "kd_lightning.core.tokens",
    "kd_lightning.features": "kd_lightning.core.taps",
    "kd_lightning.objective": "kd_lightning.core.objective",
    "kd_lightning.teacher": "kd_lightning.files.weights",
    "kd_lightning.local_paths": "kd_lightning.files.local_dirs",
    "kd_lightning.normalization": "kd_lightning.teachers.normalization",
    "kd_lightning.cache": "kd_lightning.teachers.cache_store",
    "kd_lightning.run_state": "kd_lightning.modules._run_state",
    "kd_lightning.deploy": "kd_lightning.export.deploy",
    "kd_lightning.export_formats": "kd_lightning.export.formats",
    "kd_lightning.resume": "kd_lightning.cli.resume",
    "kd_lightning.loggers": "kd_lightning.cli.loggers",
    "kd_lightning.diagnose": "kd_lightning.cli.diagnose",
    "kd_lightning.modules.temporal": "kd_lightning.teachers.temporal",
    "kd_lightning.modules.checks": "kd_lightning.modules._guards",
    "kd_lightning.modules.restore": "kd_lightning.modules._checkpoints",
    "kd_lightning.modules.evaluation": "kd_lightning.modules._evaluation",
    "kd_lightning.modules.performance": "kd_lightning.modules._performance",
    "kd_lightning.modules.sequences": "kd_lightning.core.tokens",
    "kd_lightning.callbacks.report_render": "kd_lightning.callbacks.report.render",
    "kd_lightning.callbacks.headline": "kd_lightning.callbacks.report.headline",
    "kd_lightning.callbacks.measure": "kd_lightning.callbacks.report.measure",
    "kd_lightning.callbacks.quantize": "kd_lightning.callbacks.export",
}
"""Old module path -> the module that holds its names now."""

MOVED_NAMES: dict[str, str] = {
    "kd_lightning.modules.EMATeacher": "kd_lightning.teachers.temporal.EMATeacher",
    "kd_lightning.modules.SnapshotTeacher": "kd_lightning.teachers.temporal.SnapshotTeacher",
    "kd_lightning.modules.PSKDTeacher": "kd_lightning.teachers.temporal.PSKDTeacher",
    "kd_lightning.modules.TemporalTeacher": "kd_lightning.teachers.base.TeacherSource",
    "kd_lightning.modules.temporal.TemporalTeacher": "kd_lightning.teachers.base.TeacherSource",
    "kd_lightning.modules.temporal.hookless_copy": "kd_lightning.core.networks.hookless_copy",
    "kd_lightning.teacher.freeze": "kd_lightning.core.networks.freeze",
    "kd_lightning.teacher.count_parameters": "kd_lightning.core.networks.count_parameters",
    "kd_lightning.teacher.fingerprint": "kd_lightning.files.weights.state_digest",
    "kd_lightning.modules.restore.fingerprint": "kd_lightning.files.weights.state_digest",
    "kd_lightning.modules.checks.NonFiniteLossError": "kd_lightning.modules._nonfinite.NonFiniteLossError",
    "kd_lightning.modules.checks.describe_nonfinite": "kd_lightning.modules._nonfinite.describe_nonfinite",
    "kd_lightning.modules.performance.check_not_wrapped": "kd_lightning.core.networks.check_not_wrapped",
    "kd_lightning.modules.performance.teacher_dtype": "kd_lightning.teachers.frozen.teacher_dtype",
    "kd_lightning.modules.self_distillation.BYOTExits": "kd_lightning.modules.exits.BYOTExits",
    "kd_lightning.files.atomic_write": "kd_lightning.files.write.atomic_write",
    "kd_lightning.callbacks.quantize.ConvertQuantized": "kd_lightning.callbacks.export.ConvertQuantized",
    "kd_lightning.callbacks.export.fingerprint": "kd_lightning.callbacks.export.weight_sums",
}
"""Old ``module.Name`` -> new ``module.Name``, for names that changed module on their own."""


def current_path(dotted: str) -> str:
    """The current dotted path of an old module or ``module.Name`` path (unchanged when it did not move).

    Example:
        >>> current_path("kd_lightning.cache.TeacherCache")
        'kd_lightning.teachers.cache_store.TeacherCache'
    """
    if dotted in MOVED_NAMES:
        return MOVED_NAMES[dotted]
    if dotted in MOVED_MODULES:
        return MOVED_MODULES[dotted]
    module, _, name = dotted.rpartition(".")
    if module in MOVED_MODULES:
        return f"{MOVED_MODULES[module]}.{name}"
    return dotted


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


_MISSING = object()


class _MovedModule(ModuleType):
    """An old module path: every name resolves to the object now holding it (its new module, or where the name itself
    moved, :data:`MOVED_NAMES`); the objects are the same, not copies."""

    def __getattr__(self, name: str) -> Any:
        moved = MOVED_NAMES.get(f"{self.__name__}.{name}")
        if moved is not None:
            return _resolve(moved)
        target = importlib.import_module(MOVED_MODULES[self.__name__])
        try:
            return getattr(target, name)
        except AttributeError:
            raise AttributeError(
                f"{self.__name__} moved to {target.__name__}, which has no {name!r} (see CHANGELOG.md)"
            ) from None

    def __dir__(self) -> list[str]:
        return sorted(set(dir(importlib.import_module(MOVED_MODULES[self.__name__]))))

    def _holder(self, name: str) -> tuple[ModuleType, str]:
        """The module that now holds ``name`` and its name there."""
        moved = MOVED_NAMES.get(f"{self.__name__}.{name}")
        if moved is not None:
            module, _, new_name = moved.rpartition(".")
            return importlib.import_module(module), new_name
        return importlib.import_module(MOVED_MODULES[self.__name__]), name

    def __setattr__(self, name: str, value: Any) -> None:
        """Setting a name (``monkeypatch.setattr(old_module, ...)``) sets it where it lives now, so code that reads
        it there sees the change; the value it replaced is kept for :meth:`__delattr__`. The module's own dunder names
        stay on this module."""
        if name.startswith("__") and name.endswith("__"):
            super().__setattr__(name, value)
            return
        holder, new_name = self._holder(name)
        vars(self).setdefault("__replaced__", {}).setdefault(name, getattr(holder, new_name, _MISSING))
        setattr(holder, new_name, value)

    def __delattr__(self, name: str) -> None:
        """Deleting a name set through this module puts back what it replaced (this module holds no names of its
        own to delete: ``monkeypatch.undo()`` deletes what it set); any other name is deleted where it lives."""
        if name.startswith("__") and name.endswith("__"):
            super().__delattr__(name)
            return
        holder, new_name = self._holder(name)
        replaced = vars(self).get("__replaced__", {}).pop(name, _MISSING)
        if replaced is _MISSING:
            delattr(holder, new_name)
        else:
            setattr(holder, new_name, replaced)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old module path with a module whose names resolve to where they live now."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return _MovedModule(spec.name, f"Moved to {MOVED_MODULES[spec.name]}.")

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: names resolve on access."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``kd_lightning/__init__`` calls it)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())  # before the path finders: a stale old file never wins
