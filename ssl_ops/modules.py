"""Thin ``nn.Module`` wrappers: each binds an objective's keyword arguments at construction."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from .barlow_twins import barlow_twins_loss
from .dcl import dcl_loss
from .duality import vicreg_ctr_loss, vicreg_exp_loss
from .nt_xent import nt_xent_loss
from .pirl import MemoryBank, pirl_nce_loss
from .spectral import spectral_contrastive_loss
from .vicreg import vicreg_loss
from .wmse import wmse_loss


class ObjectiveLoss(nn.Module):
    """``forward(*inputs, **overrides)`` calls ``objective(*inputs, **kwargs, **overrides)``."""

    objective: ClassVar[Callable[..., Any]]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        accepted = inspect.signature(type(self).objective).parameters
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown keyword arguments {unknown}")
        self.kwargs = kwargs

    def forward(self, *inputs: Any, **overrides: Any) -> Any:
        return type(self).objective(*inputs, **{**self.kwargs, **overrides})

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class VICRegLoss(ObjectiveLoss):
    objective = staticmethod(vicreg_loss)


class VICRegExpLoss(ObjectiveLoss):
    objective = staticmethod(vicreg_exp_loss)


class VICRegCtrLoss(ObjectiveLoss):
    objective = staticmethod(vicreg_ctr_loss)


class WMSELoss(ObjectiveLoss):
    objective = staticmethod(wmse_loss)


class NTXentLoss(ObjectiveLoss):
    objective = staticmethod(nt_xent_loss)


class DCLLoss(ObjectiveLoss):
    objective = staticmethod(dcl_loss)


class BarlowTwinsLoss(ObjectiveLoss):
    objective = staticmethod(barlow_twins_loss)


class SpectralContrastiveLoss(ObjectiveLoss):
    objective = staticmethod(spectral_contrastive_loss)


class PIRLLoss(nn.Module):
    """PIRL's NCE loss owning its ``MemoryBank`` (saved with the module's state_dict)."""

    def __init__(self, num_items: int, dim: int = 128, **kwargs: Any) -> None:
        super().__init__()
        self.bank = MemoryBank(num_items, dim)
        self.kwargs = kwargs

    def forward(
        self, image: torch.Tensor, jigsaw: torch.Tensor, indices: torch.Tensor, **overrides: Any
    ) -> Any:
        return pirl_nce_loss(image, jigsaw, indices, self.bank, **{**self.kwargs, **overrides})
