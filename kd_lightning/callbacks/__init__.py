"""Callbacks: the end-of-test distillation report (and its CPU measurements), weight and deployable-student export, and
the int8 conversion of a quantization-aware fit."""

from kd_lightning.callbacks.export import ExportStudent, ExportWeights, save_state_dict
from kd_lightning.callbacks.quantize import ConvertQuantized
from kd_lightning.callbacks.report.callback import DistillationReport
from kd_lightning.callbacks.report.measure import measure_network

__all__ = [
    "ConvertQuantized",
    "DistillationReport",
    "ExportStudent",
    "ExportWeights",
    "measure_network",
    "save_state_dict",
]
