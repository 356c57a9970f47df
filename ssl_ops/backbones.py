"""Backbones by name: torchvision ResNets (optionally with the CIFAR stem) and a small CNN.

Every builder returns a module mapping an Nx3xHxW batch to Nxfeature_dim features
(the classification head is replaced by the identity), so a probe or an exporter needs
nothing but ``backbone.feature_dim``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torchvision
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


def _resnet(name: str, cifar_stem: bool) -> nn.Module:
    model = getattr(torchvision.models, name)(weights=None)
    if cifar_stem:
        # CIFAR stem (SimCLR appendix B.9): a 3x3 stride-1 first conv and no max-pool.
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": lambda cifar_stem=False: SmallCNN(),
    "resnet18": lambda cifar_stem=False: _resnet("resnet18", cifar_stem),
    "resnet34": lambda cifar_stem=False: _resnet("resnet34", cifar_stem),
    "resnet50": lambda cifar_stem=False: _resnet("resnet50", cifar_stem),
}


def build_backbone(name: str, *, cifar_stem: bool = False) -> nn.Module:
    """Instantiate a registered backbone; ``module.feature_dim`` is its output width."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](cifar_stem=cifar_stem)


def projector(in_dim: int, dims: tuple[int, ...] | list[int]) -> nn.Sequential:
    """MLP projector/expander as in VICReg: (Linear-BN-ReLU)x(k-1), then a bias-free Linear."""
    widths = [in_dim, *dims]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths[:-1]):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
    return nn.Sequential(*layers)


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
