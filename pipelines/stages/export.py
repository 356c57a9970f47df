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
from pydantic import Field
from safetensors.torch import save_file

from ..model_io import load_backbone, load_encoder
from .base import StageConfig, StageContext

ONNX_TOLERANCE = 1e-4


class ExportConfig(StageConfig):
    inputs: ClassVar[dict[str, str]] = {"model": "pretrain", "probe": "probe"}

    type: Literal["export"]
    model: str = Field(description="name of the pretrain stage to export")
    probe: str | None = Field(None, description="probe stage whose metrics go on the card")
    include_projector: bool = Field(False, description="export backbone + projector")
    opset: int = Field(18, ge=18)
    check_batch_size: int = Field(3, gt=0, description="batch used for the onnxruntime check")


def _export_program(
    backbone: torch.nn.Module, example: torch.Tensor
) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(backbone, (example,), dynamic_shapes=({0: batch},))


def _check_onnx(path: Path, backbone: torch.nn.Module, size: int, batch_size: int) -> float:
    inputs: ClassVar[dict[str, str]] = torch.randn(
        batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)
    )
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
    return {"onnx_max_abs_diff": max_diff}
