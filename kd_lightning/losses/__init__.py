"""Distillation losses: pure tensor maths, no Lightning. Response-, feature- and relation-based, and for sequences:
token-level logit losses (language models), hidden-state losses between transformer layers and sentence-embedding
losses between encoders.

Each loss is a function holding the maths plus a :class:`DistillationLoss` module holding its hyperparameters (and
adapters), with ``forward(student, teacher, target=None) -> scalar``. Scales follow the CRD-benchmark
implementations (RepDistiller, mdistiller), so the published default weights (AT 1000, SP 3000, PKT 30000, ...) apply.

May import: nothing else of the package (the bottom layer).
"""

from kd_lightning.losses.adapters import LazyAdapter, conv_regressor
from kd_lightning.losses.base import ANY_LAYERS, DistillationLoss, TokenLoss
from kd_lightning.losses.embedding import (
    EmbeddingCosineLoss,
    PairwiseCosineLoss,
    embedding_cosine_loss,
    pairwise_cosine_loss,
)
from kd_lightning.losses.feature import ATLoss, FitNetsLoss, NSTLoss, VIDLoss, at_loss, fitnets_loss, nst_loss, vid_loss
from kd_lightning.losses.hidden import HiddenCosineLoss, HiddenMSELoss, hidden_cosine_loss, hidden_mse_loss
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
from kd_lightning.losses.token import (
    ForwardKLLoss,
    GeneralizedJSDLoss,
    ReverseKLLoss,
    SkewKLLoss,
    SkewReverseKLLoss,
    TVDLoss,
    forward_kl_loss,
    generalized_jsd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    token_cross_entropy,
    total_variation_loss,
)

__all__ = [
    "ANY_LAYERS",
    "ATLoss",
    "CCLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "EmbeddingCosineLoss",
    "FSPLoss",
    "FitNetsLoss",
    "ForwardKLLoss",
    "GeneralizedJSDLoss",
    "HiddenCosineLoss",
    "HiddenMSELoss",
    "KDLoss",
    "LSKDLoss",
    "LazyAdapter",
    "NSTLoss",
    "PKTLoss",
    "PairwiseCosineLoss",
    "RKDLoss",
    "ReverseKLLoss",
    "SPLoss",
    "SkewKLLoss",
    "SkewReverseKLLoss",
    "TVDLoss",
    "TokenLoss",
    "VIDLoss",
    "at_loss",
    "cc_loss",
    "conv_regressor",
    "dist_loss",
    "dkd_loss",
    "embedding_cosine_loss",
    "fitnets_loss",
    "forward_kl_loss",
    "fsp_loss",
    "generalized_jsd_loss",
    "hidden_cosine_loss",
    "hidden_mse_loss",
    "kd_loss",
    "ls_kd_loss",
    "nst_loss",
    "pairwise_cosine_loss",
    "pkt_loss",
    "reverse_kl_loss",
    "rkd_loss",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "sp_loss",
    "token_cross_entropy",
    "total_variation_loss",
    "vid_loss",
]
