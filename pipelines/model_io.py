"""What the pretrain stage publishes about its model (``model.json``), and reading the weights
back: the backbone for probing and export, backbone + projector for ``include_projector``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from sslpipe.ssl_ops import build_backbone, mlp

from .outputs import BACKBONE_WEIGHTS, ENCODER_WEIGHTS, MODEL_DESCRIPTION


class ModelDescription(BaseModel):
    """``model.json``: enough to rebuild the networks and to feed them the right images."""

    model_config = ConfigDict(extra="forbid")

    method: str
    backbone: str
    cifar_stem: bool
    feature_dim: int
    projector: list[int]
    projector_kwargs: dict[str, Any]  # ``ssl_ops.mlp`` keyword arguments
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    epochs: int
    data_fingerprint: str
    warm_start: str | None = None

    def write(self, directory: Path) -> None:
        (directory / MODEL_DESCRIPTION).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, model_dir: Path) -> ModelDescription:
        return cls.model_validate_json((Path(model_dir) / MODEL_DESCRIPTION).read_text())

    def build_backbone(self) -> nn.Module:
        """A freshly initialised backbone of this architecture."""
        return build_backbone(self.backbone, cifar_stem=self.cifar_stem)


def load_backbone(model_dir: Path) -> tuple[nn.Module, ModelDescription]:
    """The trained backbone in eval mode, and its description."""
    description = ModelDescription.read(model_dir)
    backbone = description.build_backbone()
    state = torch.load(Path(model_dir) / BACKBONE_WEIGHTS, map_location="cpu", weights_only=True)
    backbone.load_state_dict(state)
    return backbone.eval(), description


def load_encoder(model_dir: Path) -> nn.Module:
    """Backbone followed by the projector, as trained (eval mode): ``images → embeddings``."""
    description = ModelDescription.read(model_dir)
    backbone = description.build_backbone()
    projector = mlp(backbone.feature_dim, description.projector, **description.projector_kwargs)
    encoder = nn.Sequential(backbone, projector)
    state = torch.load(Path(model_dir) / ENCODER_WEIGHTS, map_location="cpu", weights_only=True)
    encoder.load_state_dict(state)
    return encoder.eval()
