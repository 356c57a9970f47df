"""Per-method defaults the pretrain stage reads: objective, projector, view recipe, optimizer.

A method is data: adding one means writing its objective and one ``Method`` entry here.
Every objective adapter maps a list of projected views (plus keyword arguments) to a dict with
the key ``loss`` and the unweighted terms for logging. The learning rate is
``base_lr x batch/256`` when ``lr_scaling == "linear"`` and ``base_lr`` when it is ``"none"``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .barlow_twins import barlow_twins_loss
from .dcl import dcl_abs_loss, dcl_loss, dcl_sq_loss
from .duality import vicreg_ctr_loss, vicreg_exp_loss
from .nt_xent import nt_xent_loss, simclr_abs_loss, simclr_sq_loss
from .pirl import pirl_nce_loss
from .spectral import spectral_contrastive_loss
from .vicreg import vicreg_loss
from .wmse import wmse_loss

Objective = Callable[..., dict[str, torch.Tensor]]


def _pairwise(fn: Callable[..., Any]) -> Objective:
    """Adapter for objectives of two tensors ``fn(z1, z2, ..., return_terms=True)``."""

    @functools.wraps(fn)
    def objective(views: list[torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        if len(views) != 2:
            raise ValueError(f"{fn.__name__}: takes exactly two views, got {len(views)}")
        loss, terms = fn(*views, return_terms=True, **kwargs)
        return {"loss": loss, **terms}

    return objective


def _multiview(fn: Callable[..., Any]) -> Objective:
    """Adapter for objectives of a list of views ``fn(views, ..., return_terms=True)``."""

    @functools.wraps(fn)
    def objective(views: list[torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        loss, terms = fn(views, return_terms=True, **kwargs)
        return {"loss": loss, **terms}

    return objective


# Keyword-only parameters that are not settable from a spec's ``loss`` mapping.
_NOT_SPEC_OPTIONS = {"return_terms", "generator", "update_bank"}


@dataclass(frozen=True)
class Method:
    """Defaults of one self-supervised method (papers' values; overridable in the spec)."""

    name: str
    objective: Objective
    projector: tuple[int, ...]
    views: str
    num_views: int = 2
    optimizer: str = "lars"
    base_lr: float = 0.2
    weight_decay: float = 1e-6
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    lr_scaling: str = "linear"
    lr_biases: float | None = None
    # The objective keeps per-image state: the trainer holds a ``MemoryBank`` (one row per
    # training image) and passes ``bank`` and the batch's dataset ``indices`` to the loss.
    memory_bank: bool = False

    def loss(self, views: list[torch.Tensor], **overrides: Any) -> dict[str, torch.Tensor]:
        """Loss (key ``loss``) and its named terms for a list of projected views."""
        return self.objective(views, **{**self.loss_kwargs, **overrides})

    def loss_options(self) -> list[str]:
        """Names a spec's ``loss`` mapping may set: the objective's keyword-only parameters."""
        parameters = inspect.signature(inspect.unwrap(self.objective)).parameters.values()
        return sorted(
            p.name
            for p in parameters
            if p.kind is p.KEYWORD_ONLY and p.name not in _NOT_SPEC_OPTIONS
        )


def _vicreg_family(name: str, fn: Callable[..., Any], **loss_kwargs: Any) -> Method:
    # VICReg paper, appendix C: LARS, base lr 0.2 x batch/256, wd 1e-6, 8192-8192-8192 expander.
    return Method(
        name=name,
        objective=_pairwise(fn),
        projector=(8192, 8192, 8192),
        views="vicreg",
        optimizer="lars",
        base_lr=0.2,
        weight_decay=1e-6,
        loss_kwargs=loss_kwargs,
    )


def _simclr_family(name: str, objective: Objective, **loss_kwargs: Any) -> Method:
    # SimCLR paper, section B.1: LARS, lr 0.3 x batch/256, wd 1e-6, 2048-128 head, τ = 0.1.
    return Method(
        name=name,
        objective=objective,
        projector=(2048, 128),
        views="simclr",
        optimizer="lars",
        base_lr=0.3,
        weight_decay=1e-6,
        loss_kwargs={"temperature": 0.1, **loss_kwargs},
    )


METHODS: dict[str, Method] = {
    "vicreg": _vicreg_family("vicreg", vicreg_loss),
    "vicreg_exp": _vicreg_family("vicreg_exp", vicreg_exp_loss, temperature=0.1),
    "vicreg_ctr": _vicreg_family("vicreg_ctr", vicreg_ctr_loss, temperature=0.1),
    # Barlow Twins paper, section 4 / official main.py: LARS, lr 0.2 (weights) and 0.0048
    # (biases, BN) x batch/256, wd 1.5e-6, λ = 0.0051, BYOL augmentations.
    "barlow_twins": Method(
        name="barlow_twins",
        objective=_pairwise(barlow_twins_loss),
        projector=(8192, 8192, 8192),
        views="byol",
        optimizer="lars",
        base_lr=0.2,
        lr_biases=0.0048,
        weight_decay=1.5e-6,
        loss_kwargs={"lambd": 0.0051},
    ),
    "simclr": _simclr_family("simclr", _multiview(nt_xent_loss)),
    "simclr_abs": _simclr_family("simclr_abs", _multiview(simclr_abs_loss)),
    "simclr_sq": _simclr_family("simclr_sq", _multiview(simclr_sq_loss)),
    "dcl": _simclr_family("dcl", _pairwise(dcl_loss)),
    "dclw": _simclr_family("dclw", _pairwise(dcl_loss), weighted=True, sigma=0.5),
    "dcl_abs": _simclr_family("dcl_abs", _pairwise(dcl_abs_loss)),
    "dcl_sq": _simclr_family("dcl_sq", _pairwise(dcl_sq_loss)),
    # W-MSE paper, section 5: Adam lr 1e-3, wd 1e-6, 1024-64 head, w_size 128, 2 views.
    "wmse": Method(
        name="wmse",
        objective=_multiview(wmse_loss),
        projector=(1024, 64),
        views="wmse",
        num_views=2,
        optimizer="adam",
        base_lr=1e-3,
        lr_scaling="none",
        weight_decay=1e-6,
        loss_kwargs={"w_size": 128, "w_iter": 1},
    ),
    # HaoChen et al. official config (CIFAR-10): SGD lr 0.03 x batch/256, wd 5e-4, μ = 1,
    # 1000-d MLP head without final ReLU.
    "spectral": Method(
        name="spectral",
        objective=_pairwise(spectral_contrastive_loss),
        projector=(1000, 1000),
        views="simclr",
        optimizer="sgd",
        base_lr=0.03,
        weight_decay=5e-4,
        loss_kwargs={"mu": 1.0},
    ),
    # PIRL paper, section 4: SGD lr 0.12 (batch 1024), wd 1e-4, 128-d heads, τ = 0.07,
    # 32000 negatives, λ = 0.5; pass ``indices`` and ``bank`` at call time.
    "pirl": Method(
        name="pirl",
        # views = [f(v_I), g(v_{I^t})]; the trainer passes ``indices`` and ``bank``.
        objective=_pairwise(pirl_nce_loss),
        projector=(128,),
        views="pirl",
        optimizer="sgd",
        base_lr=0.12,
        lr_scaling="none",
        weight_decay=1e-4,
        loss_kwargs={"temperature": 0.07, "num_negatives": 32000, "loss_weight": 0.5},
        memory_bank=True,
    ),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
