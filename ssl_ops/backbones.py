"""Backbones by name and the MLP heads (projectors, predictors) the methods put on top of them.

Which library builds what: ResNets come from torchvision (the ResNets the official Barlow
Twins, SimSiam and DINO code trains, and the layout VICReg's ``resnet.py`` copies, so exported
weights load into ``torchvision.models``); Vision Transformers come from timm, the maintained
ViT library (torchvision's ViT accepts one input size only), with
``dynamic_img_size`` so that crops of several sizes (DINO's 224-px global and 96-px local crops)
go through one model with interpolated position embeddings. Nothing is downloaded: every
backbone starts from random weights.

Every backbone follows ``Backbone``: images (N×3×H×W) → pooled features (N×feature_dim), which
is all that probing and export use. A ViT also offers its tokens (``ViT.forward_tokens``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    """What the pipeline needs of a backbone: ``forward(images) -> (N, feature_dim)``."""

    feature_dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class BackboneOptions:
    """What a backbone builder may be given (each builder uses the options that apply to it)."""

    image_size: int = 224  # the training input size: a ViT's position-embedding grid
    cifar_stem: bool = False  # ResNets: 3×3 stride-1 stem and no max-pool (32-px images)
    zero_init_residual: bool = False  # ResNets: the last BN of each block starts at zero
    drop_path_rate: float = 0.0  # ViTs: stochastic depth, linearly increasing over the blocks
    mask_token: bool = False  # ViTs: a learnable token for masked patches (iBOT)


class SmallCNN(nn.Sequential):
    """Four conv-BN-ReLU blocks and global average pooling: quick CPU runs and tests."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        layers: list[nn.Module] = []
        in_channels = 3
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers += [
                nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            in_channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.feature_dim = in_channels


def _resnet(name: str, options: BackboneOptions) -> nn.Module:
    import torchvision.models  # here: importing it costs seconds a small CNN need not pay

    model = getattr(torchvision.models, name)(
        weights=None, zero_init_residual=options.zero_init_residual
    )
    if options.cifar_stem:
        # CIFAR stem (SimCLR appendix B.9): a 3x3 stride-1 first conv and no max-pool.
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


@dataclass(frozen=True)
class ViTShape:
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int


# ViT-Ti/S/B (Touvron et al. 2021; Dosovitskiy et al. 2021) at patch 16, and small patches for
# 32-px images. "mini" (6 blocks, 128 wide) is a ViT a 2-core CPU trains in minutes.
VIT_SHAPES: dict[str, ViTShape] = {
    "vit_tiny_patch16": ViTShape(192, 12, 3, 16),
    "vit_small_patch16": ViTShape(384, 12, 6, 16),
    "vit_base_patch16": ViTShape(768, 12, 12, 16),
    "vit_tiny_patch4": ViTShape(192, 12, 3, 4),
    "vit_small_patch4": ViTShape(384, 12, 6, 4),
    "vit_mini_patch4": ViTShape(128, 6, 4, 4),
}


def build_vit(shape: ViTShape, options: BackboneOptions) -> nn.Module:
    """A randomly initialised ``ViT`` of ``shape``."""
    from .vit import ViT  # here: importing timm costs seconds a ResNet run need not pay

    return ViT(
        embed_dim=shape.embed_dim,
        depth=shape.depth,
        num_heads=shape.num_heads,
        patch_size=shape.patch_size,
        image_size=options.image_size,
        drop_path_rate=options.drop_path_rate,
        mask_token=options.mask_token,
    )


BackboneBuilder = Callable[[BackboneOptions], nn.Module]

BACKBONES: dict[str, BackboneBuilder] = {
    "small_cnn": lambda options: SmallCNN(),
    **{
        name: (lambda options, _name=name: _resnet(_name, options))
        for name in ("resnet18", "resnet34", "resnet50")
    },
    **{
        name: (lambda options, _shape=shape: build_vit(_shape, options))
        for name, shape in VIT_SHAPES.items()
    },
}


def build_backbone(name: str, **options: int | float | bool) -> nn.Module:
    """Instantiate a registered backbone with ``BackboneOptions(**options)``;
    ``module.feature_dim`` is its output width.

    ``zero_init_residual`` starts the last batch norm of every residual block at zero, as the
    official VICReg, Barlow Twins and SimSiam code builds its ResNets.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    backbone = BACKBONES[name](BackboneOptions(**options))  # type: ignore[arg-type]
    if not isinstance(backbone, Backbone):  # a plugin's builder, most likely
        raise TypeError(f"backbone {name!r} built a {type(backbone).__name__} without feature_dim")
    return backbone


def mlp(
    in_dim: int,
    dims: Sequence[int],
    *,
    hidden_bias: bool = True,
    last_bias: bool = False,
    output_norm: bool = False,
    output_affine: bool = True,
) -> nn.Sequential:
    """(Linear-BN-ReLU)×(k−1), then a Linear: the projector/expander of VICReg and most
    methods (``last_bias=False`` as VICReg and Barlow Twins; BYOL's heads keep it).
    ``output_norm`` adds a batch norm on the output (the spectral contrastive head; SimSiam's
    projector, whose output BN has no affine parameters)."""
    widths = [in_dim, *dims]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths[:-1]):
        layers += [nn.Linear(a, b, bias=hidden_bias), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(widths[-2], widths[-1], bias=last_bias))
    if output_norm:
        layers.append(nn.BatchNorm1d(widths[-1], affine=output_affine))
    return nn.Sequential(*layers)
