"""Per-method defaults the pretrain stage reads: objective, projector, view recipe, optimizer.

A method is data: adding one means writing its objective and one ``Method`` entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .vicreg import vicreg_loss


def _vicreg(views: list[torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
    loss, terms = vicreg_loss(*views, return_terms=True, **kwargs)
    return {"loss": loss, **terms}


@dataclass(frozen=True)
class Method:
    """Defaults of one self-supervised method (papers' values; overridable in the spec)."""

    name: str
    objective: Callable[..., dict[str, torch.Tensor]]
    projector: tuple[int, ...]
    views: str
    num_views: int = 2
    optimizer: str = "lars"
    base_lr: float = 0.2
    weight_decay: float = 1e-6
    loss_kwargs: dict[str, Any] = field(default_factory=dict)

    def loss(self, views: list[torch.Tensor], **overrides: Any) -> dict[str, torch.Tensor]:
        """Loss (key ``loss``) and its named terms for a list of projected views."""
        return self.objective(views, **{**self.loss_kwargs, **overrides})


METHODS: dict[str, Method] = {
    "vicreg": Method(
        name="vicreg",
        objective=_vicreg,
        projector=(8192, 8192, 8192),
        views="vicreg",
        optimizer="lars",
        base_lr=0.2,
        weight_decay=1e-6,
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
