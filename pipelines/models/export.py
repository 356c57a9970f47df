"""The export stage's run: ``torch.export``, ONNX checked against torch, safetensors, a card,
and the promotion gate (``stages/export.py`` has the config)."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from safetensors.torch import save_file

from ..errors import UserError
from ..run.outputs import METRICS, MODEL_CARD, ONNX_MODEL, SAFETENSORS_WEIGHTS, TORCH_PROGRAM
from ..stages.base import StageContext
from ..stages.export import ExportConfig, PromoteConfig
from .registry import ModelRegistry
from .weights import load_backbone, load_encoder

ONNX_TOLERANCE = 1e-4


def _export_program(
    backbone: torch.nn.Module, example: torch.Tensor
) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(backbone, (example,), dynamic_shapes=({0: batch},))


def _check_onnx(
    path: Path, network: torch.nn.Module, size: int, batch_size: int
) -> tuple[float, int]:
    """The largest difference between ONNX Runtime's output and torch's, and the output width."""
    inputs = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = network(inputs).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})
    return float(np.abs(got - expected).max()), expected.shape[-1]


def run(config: ExportConfig, ctx: StageContext) -> dict[str, Any]:
    backbone, description = load_backbone(ctx.inputs["model"])
    if config.include_projector and description.head is None:
        raise UserError(
            f"stage {config.name!r}: include_projector: the {description.method} model has no "
            "head; set include_projector: false"
        )
    network = load_encoder(ctx.inputs["model"]) if config.include_projector else backbone
    size = description.input_size
    example = torch.randn(2, 3, size, size)
    program = _export_program(network, example)
    torch.export.save(program, ctx.out_dir / TORCH_PROGRAM)
    onnx_path = ctx.out_dir / ONNX_MODEL
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
    max_diff, output_dim = _check_onnx(onnx_path, network, size, config.check_batch_size)
    if max_diff > ONNX_TOLERANCE:
        raise RuntimeError(
            f"ONNX output differs from torch by {max_diff:.2e} (> {ONNX_TOLERANCE:.0e})"
        )
    save_file(backbone.state_dict(), ctx.out_dir / SAFETENSORS_WEIGHTS)
    metrics = {}
    if "probe" in ctx.inputs:
        metrics = json.loads((ctx.inputs["probe"] / METRICS).read_text())
    card = {
        **description.model_dump(mode="json"),
        "formats": {
            "torch_export": TORCH_PROGRAM,
            "onnx": ONNX_MODEL,
            "safetensors": SAFETENSORS_WEIGHTS,
        },
        "outputs": "head" if config.include_projector else "backbone features",
        "output_dim": output_dim,
        "onnx_opset": config.opset,
        "onnx_max_abs_diff": max_diff,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, float)},
        "sslpipe_version": version("sslpipe"),
    }
    (ctx.out_dir / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
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
