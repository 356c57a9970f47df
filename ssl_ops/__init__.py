"""Self-supervised objectives and methods as torch math: losses, the cross-worker gather,
backbones, and the ``SSLMethod`` modules that train them.

Names are imported lazily (PEP 562), so that ``sslpipe.ssl_ops.catalog`` — the torch-free list
of methods, backbones and optimizers a spec may name — can be read without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "BACKBONES": "backbones",
    "Backbone": "backbones",
    "BackboneOptions": "backbones",
    "build_backbone": "backbones",
    "mlp": "backbones",
    "barlow_twins_loss": "barlow_twins",
    "BYOL": "byol",
    "byol_loss": "byol",
    "cosine_momentum": "byol",
    "momentum_update": "byol",
    "strict_checks": "checks",
    "barlow_twins_terms": "barlow_twins",
    "METHODS": "catalog",
    "MethodCard": "catalog",
    "get_method": "catalog",
    "dcl_loss": "dcl",
    "DINO": "dino",
    "DINOHead": "dino",
    "dino_loss": "dino",
    "dcl_abs_loss": "dcl",
    "dcl_sq_loss": "dcl",
    "gather_with_grad": "distributed",
    "dimension_contrastive_criterion": "duality",
    "sample_contrastive_criterion": "duality",
    "vicreg_ctr_loss": "duality",
    "vicreg_ctr_terms": "duality",
    "vicreg_exp_loss": "duality",
    "vicreg_exp_terms": "duality",
    "Encoder": "heads",
    "HEADS": "heads",
    "HeadSpec": "heads",
    "register_head": "heads",
    "JointEmbedding": "joint_embedding",
    "Batch": "method",
    "MethodOutput": "method",
    "MethodSettings": "method",
    "Progress": "method",
    "SSLMethod": "method",
    "build_method": "method",
    "MAE": "mae",
    "MAEDecoder": "mae",
    "mae_loss": "mae",
    "alignment": "metrics",
    "embedding_std": "metrics",
    "rankme": "metrics",
    "uniformity": "metrics",
    "BarlowTwinsLoss": "modules",
    "DCLLoss": "modules",
    "NTXentLoss": "modules",
    "PIRLLoss": "modules",
    "SpectralContrastiveLoss": "modules",
    "VICRegCtrLoss": "modules",
    "VICRegExpLoss": "modules",
    "VICRegLoss": "modules",
    "WMSELoss": "modules",
    "nt_xent_loss": "nt_xent",
    "simclr_abs_loss": "nt_xent",
    "simclr_sq_loss": "nt_xent",
    "standardize_dims": "nt_xent",
    "PIRL": "pirl",
    "JigsawHead": "pirl",
    "MemoryBank": "pirl",
    "pirl_nce_loss": "pirl",
    "SimSiam": "simsiam",
    "simsiam_loss": "simsiam",
    "spectral_contrastive_loss": "spectral",
    "spectral_contrastive_terms": "spectral",
    "GlobalBatchNorm": "sync_batchnorm",
    "convert_to_global_batchnorm": "sync_batchnorm",
    "vicreg_loss": "vicreg",
    "vicreg_terms": "vicreg",
    "LastBlocksFeatures": "vit",
    "Tokens": "vit",
    "ViT": "vit",
    "whiten": "wmse",
    "wmse_loss": "wmse",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
