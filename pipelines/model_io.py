"""Reading a pretrained backbone back: the files the pretrain stage publishes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslpipe.ssl_ops import build_backbone, projector


def read_description(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "model.json").read_text())


def build_described_backbone(description: dict[str, Any]) -> nn.Module:
    return build_backbone(description["backbone"], cifar_stem=description["cifar_stem"])


def load_backbone(model_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The trained backbone in eval mode, and its ``model.json`` description."""
    description = read_description(model_dir)
    backbone = build_described_backbone(description)
    state = torch.load(Path(model_dir) / "backbone.pt", map_location="cpu", weights_only=True)
    backbone.load_state_dict(state)
    return backbone.eval(), description


def load_encoder(model_dir: Path) -> nn.Module:
    """Backbone followed by the projector, as trained (eval mode): ``images → embeddings``."""
    description = read_description(model_dir)
    backbone = build_described_backbone(description)
    encoder = nn.Sequential(backbone, projector(backbone.feature_dim, description["projector"]))
    state = torch.load(Path(model_dir) / "encoder.pt", map_location="cpu", weights_only=True)
    encoder[0].load_state_dict(
        {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    )
    encoder[1].load_state_dict(
        {k.removeprefix("projector."): v for k, v in state.items() if k.startswith("projector.")}
    )
    return encoder.eval()
