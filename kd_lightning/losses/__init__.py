"""Distillation losses: pure tensor maths, no Lightning. Response-, feature- and relation-based.

Each loss is a function holding the maths plus a :class:`DistillationLoss` module holding its hyperparameters (and
adapters), with ``forward(student, teacher, target=None) -> scalar``. Scales follow the CRD-benchmark
implementations (RepDistiller, mdistiller), so the published default weights (AT 1000, SP 3000, PKT 30000, ...) apply.
"""

from kd_lightning.losses.adapters import LazyAdapter, conv_regressor
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.feature import ATLoss, FitNetsLoss, NSTLoss, VIDLoss, at_loss, fitnets_loss, nst_loss, vid_loss
from kd_lightning.losses.relation import (
    CCLoss,
    FSPLoss,
    PKTLoss,
    RKDLoss,
    SPLoss,
    cc_loss,
    fsp_loss,
    pkt_loss,
    rkd_loss,
    sp_loss,
)
from kd_lightning.losses.response import DISTLoss, DKDLoss, KDLoss, LSKDLoss, dist_loss, dkd_loss, kd_loss, ls_kd_loss

__all__ = [
    "ATLoss",
    "CCLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "FSPLoss",
    "FitNetsLoss",
    "KDLoss",
    "LSKDLoss",
    "LazyAdapter",
    "NSTLoss",
    "PKTLoss",
    "RKDLoss",
    "SPLoss",
    "VIDLoss",
    "at_loss",
    "cc_loss",
    "conv_regressor",
    "dist_loss",
    "dkd_loss",
    "fitnets_loss",
    "fsp_loss",
    "kd_loss",
    "ls_kd_loss",
    "nst_loss",
    "pkt_loss",
    "rkd_loss",
    "sp_loss",
    "vid_loss",
]
