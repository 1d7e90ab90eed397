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
from kd_lightning.losses.crd import CRDLoss, crd_loss, nce_contrast_loss, update_memory_bank
from kd_lightning.losses.cross_tokenizer import (
    SpanAlignedKLLoss,
    ULDLoss,
    align_spans,
    shared_vocabulary,
    span_aligned_kl_loss,
    uld_loss,
)
from kd_lightning.losses.deit import HardDistillationLoss, hard_distillation_loss
from kd_lightning.losses.embedding import (
    EmbeddingCosineLoss,
    PairwiseCosineLoss,
    embedding_cosine_loss,
    pairwise_cosine_loss,
)
from kd_lightning.losses.feature import ATLoss, FitNetsLoss, NSTLoss, VIDLoss, at_loss, fitnets_loss, nst_loss, vid_loss
from kd_lightning.losses.foundation import RADIOLoss, radio_loss
from kd_lightning.losses.hidden import HiddenCosineLoss, HiddenMSELoss, hidden_cosine_loss, hidden_mse_loss
from kd_lightning.losses.ofa import OFALoss, ofa_loss
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
from kd_lightning.losses.vit_adapters import MapToTokens, TokensToMap, map_to_tokens, token_grid, tokens_to_map

__all__ = [
    "ANY_LAYERS",
    "ATLoss",
    "CCLoss",
    "CRDLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "EmbeddingCosineLoss",
    "FSPLoss",
    "FitNetsLoss",
    "ForwardKLLoss",
    "GeneralizedJSDLoss",
    "HardDistillationLoss",
    "HiddenCosineLoss",
    "HiddenMSELoss",
    "KDLoss",
    "LSKDLoss",
    "LazyAdapter",
    "MapToTokens",
    "NSTLoss",
    "OFALoss",
    "PKTLoss",
    "PairwiseCosineLoss",
    "RADIOLoss",
    "RKDLoss",
    "ReverseKLLoss",
    "SPLoss",
    "SkewKLLoss",
    "SkewReverseKLLoss",
    "SpanAlignedKLLoss",
    "TVDLoss",
    "TokenLoss",
    "TokensToMap",
    "ULDLoss",
    "VIDLoss",
    "align_spans",
    "at_loss",
    "cc_loss",
    "conv_regressor",
    "crd_loss",
    "dist_loss",
    "dkd_loss",
    "embedding_cosine_loss",
    "fitnets_loss",
    "forward_kl_loss",
    "fsp_loss",
    "generalized_jsd_loss",
    "hard_distillation_loss",
    "hidden_cosine_loss",
    "hidden_mse_loss",
    "kd_loss",
    "ls_kd_loss",
    "map_to_tokens",
    "nce_contrast_loss",
    "nst_loss",
    "ofa_loss",
    "pairwise_cosine_loss",
    "pkt_loss",
    "radio_loss",
    "reverse_kl_loss",
    "rkd_loss",
    "shared_vocabulary",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "sp_loss",
    "span_aligned_kl_loss",
    "token_cross_entropy",
    "token_grid",
    "tokens_to_map",
    "total_variation_loss",
    "uld_loss",
    "update_memory_bank",
    "vid_loss",
]
