"""Distillation losses: pure tensor maths, no Lightning. Response-, feature- and relation-based."""

from kd_lightning.losses.adapters import LazyAdapter, conv_regressor
from kd_lightning.losses.response import DISTLoss, DKDLoss, KDLoss, LSKDLoss, dist_loss, dkd_loss, kd_loss, ls_kd_loss

__all__ = [
    "DISTLoss",
    "DKDLoss",
    "KDLoss",
    "LSKDLoss",
    "LazyAdapter",
    "conv_regressor",
    "dist_loss",
    "dkd_loss",
    "kd_loss",
    "ls_kd_loss",
]
