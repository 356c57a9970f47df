"""The export stage on a ResNet-18: torch.export, ONNX with a dynamic batch, safetensors that
load into torchvision's own model, and the model card; a ViT through the same formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from sslpipe.pipelines.models.export import run
from sslpipe.pipelines.models.weights import ModelDescription
from sslpipe.pipelines.run.outputs import BACKBONE_WEIGHTS, ENCODER_WEIGHTS
from sslpipe.pipelines.stages.base import StageContext
from sslpipe.pipelines.stages.export import ExportConfig
from sslpipe.ssl_ops import build_backbone, mlp


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pretrain")
    torch.manual_seed(0)
    head = {"in_dim": 512, "dims": [64, 32], "output_norm": True}  # BN on the output
    encoder = torch.nn.Sequential(build_backbone("resnet18"), mlp(**head))
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
        backbone_options={},
        feature_dim=512,
        head={"kind": "mlp", "kwargs": head},
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


def test_vit_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    """A ViT/4 on 32-px images: torch.export and ONNX take other batch sizes than the
    example's, and both give torch's CLS features."""
    model_dir = tmp_path / "pretrain"
    model_dir.mkdir()
    torch.manual_seed(0)
    options = {"image_size": 32}
    backbone = build_backbone("vit_mini_patch4", **options).eval()
    torch.save(backbone.state_dict(), model_dir / BACKBONE_WEIGHTS)
    ModelDescription(
        method="vicreg",
        backbone="vit_mini_patch4",
        backbone_options=options,
        feature_dim=backbone.feature_dim,
        head=None,
        input_size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        epochs=1,
        data_fingerprint="v" * 64,
    ).write(model_dir)
    out = tmp_path / "export"
    assert _export(model_dir, out)["onnx_max_abs_diff"] <= 1e-4
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(images).numpy()
    (onnx_out,) = onnxruntime.InferenceSession(str(out / "model.onnx")).run(
        None, {"images": images.numpy()}
    )
    np.testing.assert_allclose(onnx_out, expected, atol=1e-4)
    program = torch.export.load(out / "model.pt2")
    np.testing.assert_allclose(program.module()(images).detach().numpy(), expected, atol=1e-5)
    assert json.loads((out / "model_card.json").read_text())["output_dim"] == 128
