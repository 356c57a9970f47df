"""The export stage on a ResNet-18: torch.export, ONNX with a dynamic batch, safetensors that
load into torchvision's own model, and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from sslpipe.pipelines.exporter import run
from sslpipe.pipelines.model_io import ModelDescription
from sslpipe.pipelines.outputs import BACKBONE_WEIGHTS, ENCODER_WEIGHTS
from sslpipe.pipelines.stages.base import StageContext
from sslpipe.pipelines.stages.export import ExportConfig
from sslpipe.ssl_ops import build_backbone, mlp


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pretrain")
    torch.manual_seed(0)
    projector_kwargs = {"output_norm": True}  # a head with a batch norm on its output
    encoder = torch.nn.Sequential(
        build_backbone("resnet18"), mlp(512, [64, 32], **projector_kwargs)
    )
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for module in encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    torch.save(encoder[0].state_dict(), directory / BACKBONE_WEIGHTS)
    torch.save(encoder.state_dict(), directory / ENCODER_WEIGHTS)
    ModelDescription(
        method="vicreg",
        backbone="resnet18",
        cifar_stem=False,
        feature_dim=512,
        projector=[64, 32],
        projector_kwargs=projector_kwargs,
        input_size=64,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        epochs=1,
        data_fingerprint="f" * 64,
    ).write(directory)
    return directory


def _export(pretrained: Path, out: Path, **options) -> dict:
    out.mkdir()
    config = ExportConfig(name="export", type="export", model="pretrain", **options)
    ctx = StageContext(out, {"model": pretrained}, out.parent, "test")
    return run(config, ctx)


def test_backbone_export_formats_agree(pretrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    metrics = _export(pretrained, out)
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    reference = torchvision.models.resnet18()
    missing, unexpected = reference.load_state_dict(
        load_file(out / "backbone.safetensors"), strict=False
    )
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    reference.fc = torch.nn.Identity()
    reference.eval()
    images = torch.randn(7, 3, 64, 64)  # another batch size than the export example
    with torch.no_grad():
        expected = reference(images).numpy()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (onnx_out,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4)
    program = torch.export.load(out / "model.pt2")
    np.testing.assert_allclose(program.module()(images).detach().numpy(), expected, atol=1e-5)
    card = json.loads((out / "model_card.json").read_text())
    assert card["feature_dim"] == card["output_dim"] == 512
    assert card["data_fingerprint"] == "f" * 64 and card["sslpipe_version"]


def test_projector_export_outputs_embeddings(pretrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    _export(pretrained, out, include_projector=True)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (embeddings,) = session.run(None, {"images": np.random.rand(2, 3, 64, 64).astype("float32")})
    assert embeddings.shape == (2, 32)
    assert json.loads((out / "model_card.json").read_text())["output_dim"] == 32
