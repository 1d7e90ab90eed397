"""Callbacks: the end-of-run report and weight export."""

from kd_lightning.callbacks.export import ExportWeights, save_state_dict
from kd_lightning.callbacks.report import DistillationReport

__all__ = ["DistillationReport", "ExportWeights", "save_state_dict"]
