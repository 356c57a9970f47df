"""The method protocol: a self-supervised method is one ``nn.Module`` that owns its networks,
its objective, its state and its per-step hook.

The trainer knows no method by name. It builds one with ``build_method`` from a catalog card
(``ssl_ops.catalog``) and ``MethodSettings``, then per step calls::

    output = method(views, batch)      # MethodOutput: losses["loss"] + named terms
    output.losses["loss"].backward(); optimizer.step()
    method.after_step(step, total_steps)   # momentum targets, schedules

Everything a method keeps between steps (memory bank, target network, centring buffers) is a
parameter or buffer, so ``state_dict()`` checkpoints and resumes it with no per-method code.
``backbone`` is what the probe and export stages use; ``encoder()`` is backbone + projector.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from .backbones import build_backbone, mlp

if TYPE_CHECKING:
    from .catalog import MethodCard


class Batch(NamedTuple):
    """What a loader gives besides the views."""

    labels: torch.Tensor  # (N,) int64, −1 = unlabelled
    indices: torch.Tensor | None = None  # (N,) int64 positions in the split, when asked for


class MethodOutput(NamedTuple):
    """One forward pass: the losses and what the trainer monitors (both detached)."""

    losses: dict[str, torch.Tensor]  # "loss" (differentiable) and its named terms
    embedding: torch.Tensor  # the first view's projection: RankMe, embedding std, collapse
    features: torch.Tensor  # the first view's backbone features: the online linear probe


@dataclass(frozen=True)
class MethodSettings:
    """A method's settings once the spec and the card's defaults are merged."""

    backbone: str
    projector: tuple[int, ...]
    cifar_stem: bool = False
    zero_init_residual: bool = False
    loss: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    separate_branches: bool = False
    branch_backbone: str | None = None  # the second branch's backbone (default: backbone)
    num_samples: int = 0  # training images, for per-image state
    seed: int = 0

    def make_backbone(self, name: str | None = None) -> nn.Module:
        return build_backbone(
            name or self.backbone,
            cifar_stem=self.cifar_stem,
            zero_init_residual=self.zero_init_residual,
        )


class SSLMethod(nn.Module):
    """Base class of every method (see the module docstring)."""

    backbone: nn.Module
    projector: nn.Module
    # ``backbones.mlp`` keyword arguments the projector was built with (for re-loading it).
    projector_kwargs: dict[str, Any]

    def forward(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step ``step`` (1-based) of ``total_steps``."""

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at the base lr throughout, outside the schedule (none here)."""
        return []

    def encoder(self) -> nn.Sequential:
        """Backbone then projector: images → embeddings, as trained."""
        return nn.Sequential(self.backbone, self.projector)

    def build_projector(self, in_dim: int, dims: tuple[int, ...], **kwargs: Any) -> nn.Module:
        """``backbones.mlp(in_dim, dims, **kwargs)``, remembered in ``projector_kwargs``."""
        self.projector_kwargs = kwargs
        return mlp(in_dim, dims, **kwargs)


def load_attribute(path: str) -> Any:
    """``"package.module:attribute"`` → the attribute (the catalog names code this way)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_method(card: MethodCard, settings: MethodSettings) -> SSLMethod:
    """The card's model class, built from ``settings`` (weights seeded by ``settings.seed``)."""
    torch.manual_seed(settings.seed)
    return load_attribute(card.model)(card, settings)
