"""Backbones by name (torchvision ResNets, optionally with the CIFAR stem, and a small CNN) and
the MLP heads (projectors, predictors) the methods put on top of them.

Every builder returns a module mapping an Nx3xHxW batch to Nxfeature_dim features
(the classification head is replaced by the identity), so a probe or an exporter needs
nothing but ``backbone.feature_dim``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn


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


def _resnet(name: str, cifar_stem: bool, zero_init_residual: bool) -> nn.Module:
    import torchvision.models  # here: importing it costs seconds a small CNN need not pay

    model = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
    if cifar_stem:
        # CIFAR stem (SimCLR appendix B.9): a 3x3 stride-1 first conv and no max-pool.
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


BackboneBuilder = Callable[..., nn.Module]

BACKBONES: dict[str, BackboneBuilder] = {
    "small_cnn": lambda cifar_stem=False, zero_init_residual=False: SmallCNN(),
    **{
        name: (
            lambda cifar_stem=False, zero_init_residual=False, _name=name: _resnet(
                _name, cifar_stem, zero_init_residual
            )
        )
        for name in ("resnet18", "resnet34", "resnet50")
    },
}


def build_backbone(
    name: str, *, cifar_stem: bool = False, zero_init_residual: bool = False
) -> nn.Module:
    """Instantiate a registered backbone; ``module.feature_dim`` is its output width.

    ``zero_init_residual`` starts the last batch norm of every residual block at zero, as the
    official VICReg, Barlow Twins and SimSiam code builds its ResNets.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)


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


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
