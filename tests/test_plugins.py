"""Third-party stage types and methods arrive through installed entry points, and only so."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

PLUGIN = """
from dataclasses import replace
from typing import Literal

from sslpipe.pipelines.stages.base import ResourceRequest, StageConfig, StageType
from sslpipe.ssl_ops.catalog import METHODS


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
VICREG = METHODS["vicreg"]
METHOD = replace(VICREG, name="vicreg_light", loss={**VICREG.loss, "cov_coeff": 0.5})
"""

ENTRY_POINTS = """\
[sslpipe.stages]
hello = sslpipe_hello:STAGE_TYPE

[sslpipe.methods]
vicreg_light = sslpipe_hello:METHOD
"""


def _install_plugin(site: Path) -> None:
    """What ``pip install`` leaves behind: the module and its dist-info with entry points."""
    (site / "sslpipe_hello.py").write_text(PLUGIN)
    info = site / "sslpipe_hello-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sslpipe-hello\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)


def _sslpipe(site: Path | None, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "sslpipe.pipelines.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_stage_type_and_method_are_usable_from_yaml(tmp_path: Path) -> None:
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
    source: {{kind: synthetic, num_images: 10}}
  - name: pretrain
    type: pretrain
    data: ingest
    method: vicreg_light
"""
    )
    without = _sslpipe(None, "validate", str(spec))
    assert without.returncode == 2
    assert "'hello' is not allowed" in without.stderr
    assert "'vicreg_light' is not allowed" in without.stderr

    assert _sslpipe(site, "validate", str(spec)).returncode == 0
    result = _sslpipe(site, "run", str(spec), "--set", "stages=[{name: greet, type: hello}]")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs" / "greet" / "greeting.txt").read_text() == "hello"

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
