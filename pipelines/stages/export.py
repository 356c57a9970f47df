"""Export stage: the backbone as a ``torch.export`` program, ONNX and safetensors, with a card.

The ONNX file is run with onnxruntime and compared with torch before anything is published;
a mismatch fails the stage and leaves no files behind.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnxruntime
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import save_file

from ..errors import UserError
from ..model_io import load_backbone, load_encoder
from ..registry import ModelRegistry
from .base import StageConfig, StageContext

ONNX_TOLERANCE = 1e-4


class PromoteConfig(BaseModel):
    """Publish the export in a model registry if it is not worse than the promoted model."""

    model_config = ConfigDict(extra="forbid")

    registry: str = Field(description="registry folder (see pipelines/registry.py)")
    metric: str = Field(
        "probe.top1",
        pattern=r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_@]+$",
        description="<probe stage>.<key of its metrics.json>",
    )
    min_delta: float = Field(
        0.0, description="promote if metric >= promoted metric + min_delta (metric units)"
    )


class ExportConfig(StageConfig):
    inputs: ClassVar[dict[str, str]] = {"model": "pretrain", "probe": "probe"}

    type: Literal["export"]
    model: str = Field(description="name of the pretrain stage to export")
    probe: str | None = Field(None, description="probe stage whose metrics go on the card")
    include_projector: bool = Field(False, description="export backbone + projector")
    opset: int = Field(18, ge=18)
    check_batch_size: int = Field(3, gt=0, description="batch used for the onnxruntime check")
    promote: PromoteConfig | None = None

    @model_validator(mode="after")
    def _promotion_metric_is_probed(self) -> ExportConfig:
        if self.promote is not None:
            stage = self.promote.metric.split(".")[0]
            if stage != self.probe:
                raise ValueError(
                    f"promote.metric {self.promote.metric!r} must name this export's probe "
                    f"stage (probe: {self.probe})"
                )
        return self


def _export_program(
    backbone: torch.nn.Module, example: torch.Tensor
) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(backbone, (example,), dynamic_shapes=({0: batch},))


def _check_onnx(path: Path, backbone: torch.nn.Module, size: int, batch_size: int) -> float:
    inputs = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = backbone(inputs).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    return float(np.abs(got - expected).max())


def run(config: ExportConfig, ctx: StageContext) -> dict[str, Any]:
    backbone, description = load_backbone(ctx.inputs["model"])
    network = load_encoder(ctx.inputs["model"]) if config.include_projector else backbone
    size = description["input_size"]
    example = torch.randn(2, 3, size, size)
    program = _export_program(network, example)
    torch.export.save(program, ctx.out_dir / "model.pt2")
    onnx_path = ctx.out_dir / "model.onnx"
    torch.onnx.export(
        program,
        (example,),
        onnx_path,
        input_names=["images"],
        output_names=["features"],
        opset_version=config.opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    max_diff = _check_onnx(onnx_path, network, size, config.check_batch_size)
    if max_diff > ONNX_TOLERANCE:
        raise RuntimeError(
            f"ONNX output differs from torch by {max_diff:.2e} (> {ONNX_TOLERANCE:.0e})"
        )
    save_file(backbone.state_dict(), ctx.out_dir / "backbone.safetensors")
    metrics = {}
    if "probe" in ctx.inputs:
        metrics = json.loads((ctx.inputs["probe"] / "metrics.json").read_text())
    card = {
        **description,
        "formats": {
            "torch_export": "model.pt2",
            "onnx": "model.onnx",
            "safetensors": "backbone.safetensors",
        },
        "outputs": "projector" if config.include_projector else "backbone features",
        "output_dim": description["projector"][-1]
        if config.include_projector
        else description["feature_dim"],
        "onnx_opset": config.opset,
        "onnx_max_abs_diff": max_diff,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
        "sslpipe_version": version("sslpipe"),
    }
    (ctx.out_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    summary: dict[str, Any] = {"onnx_max_abs_diff": max_diff}
    if config.promote is not None:
        summary |= _promote(config.promote, ctx.out_dir, metrics)
    return summary


def _promote(promote: PromoteConfig, model_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    key = promote.metric.split(".", 1)[1]
    if not isinstance(metrics.get(key), int | float):
        known = ", ".join(k for k, v in metrics.items() if isinstance(v, int | float))
        raise UserError(f"promote.metric {promote.metric!r}: the probe has no {key!r} ({known})")
    registry = ModelRegistry(promote.registry)
    decision = registry.promote(model_dir, promote.metric, float(metrics[key]), promote.min_delta)
    print(f"registry {registry.root}: {decision}", flush=True)
    return {"promoted": int(decision.promoted), "promotion": str(decision)}
