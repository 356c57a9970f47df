"""The method protocol: a self-supervised method is one ``nn.Module`` that owns its networks,
its objective, its state and its per-step hooks.

The trainer knows no method by name. It builds one with ``build_method`` from a catalog card
(``ssl_ops.catalog``) and ``MethodSettings`` (the card's defaults and the spec, merged once),
then per optimizer step, with the run's ``Progress``::

    method.on_step_start(progress)          # schedules the loss reads (temperatures)
    output = method(views, batch)           # MethodOutput: losses["loss"] + named terms
    output.losses["loss"].backward()
    method.before_optimizer_step(progress)  # gradient surgery (clipping, frozen layers)
    optimizer.step(); scheduler.step()
    method.after_step(progress)             # momentum targets

Everything a method keeps between steps (memory bank, target network, centring buffers) is a
parameter or buffer, so ``state_dict()`` checkpoints and resumes it with no per-method code;
hooks derive their schedules from ``Progress``, never from a counter of their own.
``backbone`` (an ``ssl_ops.backbones.Backbone``) is what the probe and export stages use;
``encoder()`` is backbone + head (``projector``), rebuilt elsewhere from ``head_spec``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from .backbones import build_backbone
from .heads import Encoder, HeadSpec

if TYPE_CHECKING:
    from .catalog import MethodCard


class Batch(NamedTuple):
    """What a loader gives besides the views."""

    labels: torch.Tensor  # (N,) int64, −1 = unlabelled
    indices: torch.Tensor | None = None  # (N,) int64 positions in the split, when asked for


class MethodOutput(NamedTuple):
    """One forward pass: the losses and what the trainer may monitor (detached). Monitors use
    what is offered: RankMe, the embedding std and the collapse guard need ``embedding``, the
    online linear probe ``features``."""

    losses: dict[str, torch.Tensor]  # "loss" (differentiable) and its named terms
    embedding: torch.Tensor | None = None  # the first view's projection (N, E)
    features: torch.Tensor | None = None  # the first view's pooled backbone features (N, F)


@dataclass(frozen=True)
class Progress:
    """Where the run is when a hook is called."""

    step: int  # 0-based index of the current optimizer step over the run
    epoch: int  # 0-based
    steps_per_epoch: int
    total_steps: int

    @property
    def epoch_float(self) -> float:
        """Epochs done before this step, fractional: ``step / steps_per_epoch``."""
        return self.step / self.steps_per_epoch

    @classmethod
    def at(cls, step: int, steps_per_epoch: int, total_steps: int) -> Progress:
        return cls(step, step // steps_per_epoch, steps_per_epoch, total_steps)


@dataclass(frozen=True)
class MethodSettings:
    """A method's settings once the spec and the card's defaults are merged."""

    backbone: str
    projector: tuple[int, ...]
    image_size: int = 224  # the first view's size (a ViT's position-embedding grid)
    cifar_stem: bool = False
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    loss: Mapping[str, Any] = field(default_factory=dict)  # the card's, with the spec's
    options: Mapping[str, Any] = field(default_factory=dict)  # the card's, with the spec's
    separate_branches: bool = False
    branch_backbone: str | None = None  # the second branch's backbone (default: backbone)
    num_samples: int = 0  # training images, for per-image state
    seed: int = 0

    def backbone_options(self) -> dict[str, Any]:
        """``backbones.BackboneOptions`` of the backbone (what ``model.json`` records)."""
        return {
            "image_size": self.image_size,
            "cifar_stem": self.cifar_stem,
            "zero_init_residual": self.zero_init_residual,
            "drop_path_rate": self.drop_path_rate,
        }

    def make_backbone(self, name: str | None = None, **overrides: Any) -> nn.Module:
        """The backbone (``name``, default ``backbone``), ``overrides`` replacing options
        (a teacher without drop-path, iBOT's ``mask_token=True``)."""
        return build_backbone(name or self.backbone, **{**self.backbone_options(), **overrides})


class SSLMethod(nn.Module):
    """Base class of every method (see the module docstring)."""

    backbone: nn.Module
    projector: nn.Module | None  # the head ``encoder()`` puts after the backbone
    head_spec: HeadSpec | None  # how to rebuild ``projector`` (``build_head``)

    def __init__(self) -> None:
        super().__init__()
        self.projector = None
        self.head_spec = None

    def forward(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        raise NotImplementedError

    def on_step_start(self, progress: Progress) -> None:
        """Before the forward pass of step ``progress.step``."""

    def before_optimizer_step(self, progress: Progress) -> None:
        """After ``backward()`` (and the spec's ``grad_clip``), before ``optimizer.step()``."""

    def after_step(self, progress: Progress) -> None:
        """After the optimizer step (and the scheduler's) of step ``progress.step``."""

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at the base lr throughout, outside the schedule (none here)."""
        return []

    def encoder(self) -> Encoder:
        """Backbone then head: images → embeddings, as trained."""
        if self.projector is None:
            raise ValueError(f"{type(self).__name__} has no head to put after its backbone")
        return Encoder(self.backbone, self.projector)

    def build_head(self, kind: str, **kwargs: Any) -> nn.Module:
        """``heads.HEADS[kind](**kwargs)``, remembered in ``head_spec`` (``model.json``);
        ``kwargs`` must be JSON values."""
        self.head_spec = HeadSpec(kind, kwargs)
        return self.head_spec.build()

    def build_projector(self, in_dim: int, dims: tuple[int, ...], **kwargs: Any) -> nn.Module:
        """The ``mlp`` head: ``build_head("mlp", in_dim=in_dim, dims=dims, **kwargs)``."""
        return self.build_head("mlp", in_dim=in_dim, dims=list(dims), **kwargs)


def load_attribute(path: str) -> Any:
    """``"package.module:attribute"`` → the attribute (the catalog names code this way)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_method(card: MethodCard, settings: MethodSettings) -> SSLMethod:
    """The card's model class, built from ``settings`` (weights seeded by ``settings.seed``)."""
    torch.manual_seed(settings.seed)
    return load_attribute(card.model)(card, settings)
