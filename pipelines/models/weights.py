"""What the pretrain stage publishes about its model (``model.json``), and reading the weights
back: the backbone for probing and export, backbone + head for ``include_projector``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from sslpipe.ssl_ops import Encoder, HeadSpec, build_backbone
from sslpipe.ssl_ops.catalog import METHODS, get_method
from sslpipe.ssl_ops.method import load_attribute

from ..plugins import add_backbone_plugins, add_plugins
from ..run.outputs import BACKBONE_WEIGHTS, ENCODER_WEIGHTS, MODEL_DESCRIPTION


class HeadRecord(BaseModel):
    """How the method's head is rebuilt: ``ssl_ops.HEADS[kind](**kwargs)``."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    kwargs: dict[str, Any]


class ModelDescription(BaseModel):
    """``model.json``: enough to rebuild the networks and to feed them the right images."""

    model_config = ConfigDict(extra="forbid")

    method: str
    backbone: str
    backbone_options: dict[str, Any]  # ``ssl_ops.BackboneOptions`` fields
    feature_dim: int
    head: HeadRecord | None  # the head ``include_projector`` exports, if the method has one
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    epochs: int
    data_fingerprint: str
    warm_start: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_older_files(cls, data: Any) -> Any:
        return upgraded(data) if isinstance(data, dict) else data

    def write(self, directory: Path) -> None:
        (directory / MODEL_DESCRIPTION).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, model_dir: Path) -> ModelDescription:
        return cls.model_validate_json((Path(model_dir) / MODEL_DESCRIPTION).read_text())

    def build_backbone(self) -> nn.Module:
        """A freshly initialised backbone of this architecture (plugin backbones too)."""
        add_backbone_plugins()
        return build_backbone(self.backbone, **self.backbone_options)

    def build_head(self) -> nn.Module:
        """A freshly initialised head of the method (its module imported, so that the head
        kinds it registers are known)."""
        if self.head is None:
            raise ValueError(f"method {self.method!r} trained no head to rebuild")
        add_plugins("sslpipe.methods", METHODS)
        load_attribute(get_method(self.method).model)
        return HeadSpec(self.head.kind, self.head.kwargs).build()


def upgraded(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``model.json`` (or a model card) written before heads had kinds and
    backbones had options, in today's form; today's fields are returned as they are."""
    if "backbone_options" in fields:
        return fields
    fields = dict(fields)
    cifar_stem = fields.pop("cifar_stem", False)
    fields["backbone_options"] = {"cifar_stem": cifar_stem}
    if "projector_kwargs" in fields:
        dims, kwargs = fields.pop("projector"), fields.pop("projector_kwargs")
        in_dim = fields["feature_dim"]
        fields["head"] = {"kind": "mlp", "kwargs": {"in_dim": in_dim, "dims": dims, **kwargs}}
    return fields


def load_backbone(model_dir: Path) -> tuple[nn.Module, ModelDescription]:
    """The trained backbone in eval mode, and its description."""
    description = ModelDescription.read(model_dir)
    backbone = description.build_backbone()
    state = torch.load(Path(model_dir) / BACKBONE_WEIGHTS, map_location="cpu", weights_only=True)
    backbone.load_state_dict(state)
    return backbone.eval(), description


def load_encoder(model_dir: Path) -> Encoder:
    """Backbone followed by the head, as trained (eval mode): ``images → embeddings``."""
    description = ModelDescription.read(model_dir)
    encoder = Encoder(description.build_backbone(), description.build_head())
    state = torch.load(Path(model_dir) / ENCODER_WEIGHTS, map_location="cpu", weights_only=True)
    encoder.load_state_dict(state)
    return encoder.eval()
