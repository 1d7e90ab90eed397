"""The LightningModules, one per distillation mode, all on :class:`DistillationModule`; private helpers in ``_*.py``.

May import: ``kd_lightning.losses``, ``core``, ``files``, ``models``, ``data``, ``teachers``.
"""

from kd_lightning.modules.base import DistillationModule
from kd_lightning.modules.classifier import Classifier
from kd_lightning.modules.deployable import Deployable
from kd_lightning.modules.exits import BYOTExits
from kd_lightning.modules.offline import OfflineDistillation
from kd_lightning.modules.on_policy import OnPolicy
from kd_lightning.modules.online import OnlineDistillation
from kd_lightning.modules.self_distillation import SelfDistillation
from kd_lightning.modules.self_layerwise import LayerwiseSelfDistillation
from kd_lightning.modules.self_temporal import TemporalSelfDistillation

__all__ = [
    "BYOTExits",
    "Classifier",
    "Deployable",
    "DistillationModule",
    "LayerwiseSelfDistillation",
    "OfflineDistillation",
    "OnPolicy",
    "OnlineDistillation",
    "SelfDistillation",
    "TemporalSelfDistillation",
]


def __getattr__(name: str) -> object:
    """Names earlier releases exported here (the temporal teachers, now sources in ``kd_lightning.teachers``)."""
    from kd_lightning.core import moved

    current = moved.MOVED_NAMES.get(f"{__name__}.{name}")
    if current is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, _, attribute = current.rpartition(".")
    return getattr(importlib.import_module(module), attribute)
