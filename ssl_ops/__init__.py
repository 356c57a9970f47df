"""Self-supervised objectives as torch math: losses, the cross-worker gather, backbones."""

from .backbones import BACKBONES, build_backbone, projector
from .distributed import gather_with_grad
from .methods import METHODS, Method, get_method
from .vicreg import vicreg_loss, vicreg_terms

__all__ = [
    "BACKBONES",
    "METHODS",
    "Method",
    "build_backbone",
    "gather_with_grad",
    "get_method",
    "projector",
    "vicreg_loss",
    "vicreg_terms",
]
