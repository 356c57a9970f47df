"""Third-party stage types, methods and backbones arrive through installed entry points, and
only so: a toy method (its own model class, objective and head kind) on a toy backbone goes
through pretrain → probe → export without a file of the project knowing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

PLUGIN = """
from typing import Literal

from sslpipe.pipelines.stages.base import ResourceRequest, StageConfig, StageType
from sslpipe.ssl_ops.catalog import MethodCard


class HelloConfig(StageConfig):
    type: Literal["hello"]
    greeting: str = "hello"
    widgets: int = 0  # a Ray resource no cluster has

    def resource_request(self):
        if not self.widgets:
            return None
        return ResourceRequest(1, {"CPU": 1, "widget": self.widgets}, fields={"widget": "widgets"})


def run(config, ctx):
    (ctx.out_dir / "greeting.txt").write_text(config.greeting)
    return {"characters": float(len(config.greeting))}


STAGE_TYPE = StageType(HelloConfig, run, outputs=("greeting.txt",))
METHOD = MethodCard(
    name="toy",
    model="sslpipe_toy:ToyMethod",
    objective="sslpipe_toy:toy_loss",
    projector=(8,),
    views="vicreg",
    optimizer="adamw",
    base_lr=1e-3,
    warmup_epochs=0,
    options={"scale": 2.0},
)
"""

# The torch side, imported only where a network is built (never by ``sslpipe validate``).
TOY = """
import torch
from torch import nn

from sslpipe.ssl_ops import MethodOutput, SSLMethod, register_head


class TinyNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 6


def build_tiny_net(options):
    return TinyNet()


@register_head("toy_head")
class ToyHead(nn.Module):
    def __init__(self, in_dim: int, dim: int, scale: float) -> None:
        super().__init__()
        self.linear, self.scale = nn.Linear(in_dim, dim), scale

    def forward(self, features):
        return self.scale * self.linear(features)


def toy_loss(z1, z2):
    return (z1 - z2).pow(2).mean() - z1.std(dim=0).mean()


class ToyMethod(SSLMethod):
    def __init__(self, card, settings) -> None:
        super().__init__()
        self.backbone = settings.make_backbone()
        self.projector = self.build_head(
            "toy_head", in_dim=self.backbone.feature_dim, dim=settings.projector[-1],
            scale=float(settings.options["scale"]),
        )
        self.register_buffer("hook_calls", torch.zeros(3))

    def on_step_start(self, progress) -> None:
        self.hook_calls[0] += 1

    def before_optimizer_step(self, progress) -> None:
        self.hook_calls[1] += 1

    def after_step(self, progress) -> None:
        self.hook_calls[2] += 1

    def forward(self, views, batch):
        features = [self.backbone(view) for view in views]
        loss = toy_loss(*(self.projector(f) for f in features))
        return MethodOutput({"loss": loss}, features=features[0].detach())  # no embedding
"""

ENTRY_POINTS = """\
[sslpipe.stages]
hello = sslpipe_hello:STAGE_TYPE

[sslpipe.methods]
toy = sslpipe_hello:METHOD

[sslpipe.backbones]
tiny_net = sslpipe_toy:build_tiny_net
"""


def _install_plugin(site: Path) -> None:
    """What ``pip install`` leaves behind: the module and its dist-info with entry points."""
    (site / "sslpipe_hello.py").write_text(PLUGIN)
    (site / "sslpipe_toy.py").write_text(TOY)
    info = site / "sslpipe_hello-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sslpipe-hello\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


def _sslpipe(site: Path | None, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "sslpipe.pipelines.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_installed_stage_type_method_and_backbone_run_a_whole_pipeline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""\
name: plugins
workdir: {tmp_path / "runs"}
stages:
  - name: greet
    type: hello
    greeting: bonjour
  - name: ingest
    type: ingest
    source: {{kind: synthetic, num_images: 64, image_size: 16}}
    shard_size: 32
    val_fraction: 0.25
  - name: pretrain
    type: pretrain
    data: ingest
    method: toy
    backbone: tiny_net
    view_overrides: {{size: 16}}
    epochs: 1
    global_batch_size: 16
    num_workers: 1
    dali_threads: 1
    log_every_steps: 1
  - name: probe
    type: probe
    model: pretrain
    data: ingest
    kinds: [knn]
    knn_k: [3]
    random_init_baseline: false
  - name: export
    type: export
    model: pretrain
    include_projector: true
"""
    )
    without = _sslpipe(None, "validate", str(spec))
    assert without.returncode == 2
    assert "'hello' is not allowed" in without.stderr
    assert "'toy' is not allowed" in without.stderr
    assert "'tiny_net' is not allowed" in without.stderr

    assert _sslpipe(site, "validate", str(spec)).returncode == 0
    result = _sslpipe(site, "run", str(spec), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = tmp_path / "runs"
    assert (runs / "greet" / "greeting.txt").read_text() == "bonjour"
    # The toy head was rebuilt from model.json for the export (backbone + head, width 8).
    description = json.loads((runs / "pretrain" / "model.json").read_text())
    assert description["backbone"] == "tiny_net"
    head_kwargs = {"in_dim": 6, "dim": 8, "scale": 2.0}
    assert description["head"] == {"kind": "toy_head", "kwargs": head_kwargs}
    card = json.loads((runs / "export" / "model_card.json").read_text())
    assert card["output_dim"] == 8 and card["onnx_max_abs_diff"] <= 1e-4
    assert "top1" in json.loads((runs / "probe" / "metrics.json").read_text())
    # Without an embedding the monitors keep to what the method offers; each hook ran once a
    # step.
    history = [json.loads(line) for line in (runs / "pretrain" / "history.jsonl").open()]
    steps = [record["step"] for record in history]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
    assert not {"rankme", "embedding_std"} & set(history[-1])
    (checkpoint,) = (runs / "_ray").glob("pretrain-*/checkpoint_*/state.pt")
    state = torch.load(checkpoint, weights_only=False)
    assert state["method"]["hook_calls"].tolist() == [len(steps)] * 3

    # A request Ray can never place is one line before any stage starts, not a wait.
    started = time.monotonic()
    result = _sslpipe(
        site, "plan", str(spec), "--set", "stages.greet.widgets=2", "--force", "greet"
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        "--set stages.greet.widgets=2: stages[0].widgets: asks for widget, but the Ray "
        "cluster has none"
    )
    assert time.monotonic() - started < 120


def test_a_plugin_cannot_replace_a_builtin(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    entry_points = site / "sslpipe_hello-0.1.dist-info" / "entry_points.txt"
    entry_points.write_text(ENTRY_POINTS.replace("hello = ", "pretrain = "))
    result = _sslpipe(site, "validate", str(tmp_path / "any.yaml"))
    assert result.returncode != 0
    assert "entry point 'pretrain' of sslpipe.stages" in result.stderr
    assert "would replace a built-in" in result.stderr
