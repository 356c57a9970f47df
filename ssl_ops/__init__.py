"""Self-supervised objectives as torch math: losses, the cross-worker gather, backbones."""

from .backbones import BACKBONES, build_backbone, projector
from .barlow_twins import barlow_twins_loss, barlow_twins_terms
from .dcl import dcl_abs_loss, dcl_loss, dcl_sq_loss
from .distributed import gather_with_grad
from .duality import (
    dimension_contrastive_criterion,
    sample_contrastive_criterion,
    vicreg_ctr_loss,
    vicreg_ctr_terms,
    vicreg_exp_loss,
    vicreg_exp_terms,
)
from .methods import METHODS, Method, get_method
from .metrics import alignment, embedding_std, rankme, uniformity
from .modules import (
    BarlowTwinsLoss,
    DCLLoss,
    NTXentLoss,
    PIRLLoss,
    SpectralContrastiveLoss,
    VICRegCtrLoss,
    VICRegExpLoss,
    VICRegLoss,
    WMSELoss,
)
from .nt_xent import nt_xent_loss, simclr_abs_loss, simclr_sq_loss, standardize_dims
from .pirl import JigsawHead, MemoryBank, pirl_nce_loss
from .spectral import spectral_contrastive_loss, spectral_contrastive_terms
from .vicreg import vicreg_loss, vicreg_terms
from .wmse import whiten, wmse_loss

__all__ = [
    "BACKBONES",
    "METHODS",
    "BarlowTwinsLoss",
    "DCLLoss",
    "JigsawHead",
    "MemoryBank",
    "Method",
    "NTXentLoss",
    "PIRLLoss",
    "SpectralContrastiveLoss",
    "VICRegCtrLoss",
    "VICRegExpLoss",
    "VICRegLoss",
    "WMSELoss",
    "alignment",
    "barlow_twins_loss",
    "barlow_twins_terms",
    "build_backbone",
    "dcl_abs_loss",
    "dcl_loss",
    "dcl_sq_loss",
    "dimension_contrastive_criterion",
    "embedding_std",
    "gather_with_grad",
    "get_method",
    "nt_xent_loss",
    "pirl_nce_loss",
    "projector",
    "rankme",
    "sample_contrastive_criterion",
    "simclr_abs_loss",
    "simclr_sq_loss",
    "spectral_contrastive_loss",
    "spectral_contrastive_terms",
    "standardize_dims",
    "uniformity",
    "vicreg_ctr_loss",
    "vicreg_ctr_terms",
    "vicreg_exp_loss",
    "vicreg_exp_terms",
    "vicreg_loss",
    "vicreg_terms",
    "whiten",
    "wmse_loss",
]
