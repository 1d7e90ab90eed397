"""Callbacks: the end-of-test distillation report (and its CPU measurements), and the end-of-fit exports of the
deployable student (its weights, its checked files, its int8 conversion); a model summary without an empty FLOPs
column.

May import: ``kd_lightning.losses``, ``core``, ``files``, ``models``, ``data``, ``teachers``, ``modules``, ``export``.
"""

from kd_lightning.callbacks.export import ConvertQuantized, ExportStudent, ExportWeights, save_state_dict
from kd_lightning.callbacks.report import DistillationReport, measure_network
from kd_lightning.callbacks.summary import CompactModelSummary

__all__ = [
    "CompactModelSummary",
    "ConvertQuantized",
    "DistillationReport",
    "ExportStudent",
    "ExportWeights",
    "measure_network",
    "save_state_dict",
]
