"""The README's main job, end to end on the real stack: ingest → pretrain → probe → export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from sslpipe.pipelines.models.weights import load_backbone

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow
QUICKSTART_EPOCHS, EPOCHS = 10, 5


def _sslpipe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sslpipe.pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=900,
    )


def _processes_mentioning(text: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if text in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("quickstart")
    spec_text = (REPO / "pipelines/examples/quickstart.yaml").read_text()
    assert f"    epochs: {QUICKSTART_EPOCHS}\n" in spec_text
    # The example as shipped, in a temporary workdir and with fewer epochs (test time).
    spec_text = spec_text.replace(f"    epochs: {QUICKSTART_EPOCHS}\n", f"    epochs: {EPOCHS}\n")
    spec = base / "quickstart.yaml"
    spec.write_text(spec_text.replace("workdir: runs/quickstart", f"workdir: {base / 'runs'}"))
    ray_tmp = Path("/tmp") / f"sslpipe-ray-{os.getpid()}"
    result = _sslpipe("run", str(spec), env={"RAY_TMPDIR": str(ray_tmp)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return spec, base / "runs", result.stdout + str(ray_tmp)


def test_probe_beats_random_init_by_ten_points(quickstart) -> None:
    _, workdir, _ = quickstart
    metrics = json.loads((workdir / "probe" / "metrics.json").read_text())
    assert metrics["top1"] >= metrics["top1_random_init"] + 10, metrics


def test_every_stage_published_its_outputs_and_state(quickstart) -> None:
    _, workdir, output = quickstart
    for stage in ("ingest", "pretrain", "probe", "export"):
        state = json.loads((workdir / stage / "state.json").read_text())
        assert state["status"] == "succeeded" and len(state["fingerprint"]) == 64
    manifest = json.loads((workdir / "ingest" / "manifest.json").read_text())
    assert manifest["num_samples"] == 6000 and manifest["num_classes"] == 10
    history = [json.loads(line) for line in (workdir / "pretrain" / "history.jsonl").open()]
    steps = [record["step"] for record in history]  # a record per sync point
    assert steps == sorted(set(steps)) and steps[-1] == EPOCHS * (4800 // 128)
    assert {"loss", "invariance", "variance", "covariance", "lr"} <= set(history[0])
    assert all(np.isfinite(record["loss"]) for record in history)
    checkpoints = list((workdir / "_ray").glob("pretrain-*/checkpoint_20*"))
    assert len(checkpoints) == 2  # one per epoch, the newest two kept
    assert str(workdir / "probe" / "metrics.json") in output
    assert str(workdir / "export" / "model.onnx") in output
    assert not (workdir / ".staging").exists() or not any((workdir / ".staging").iterdir())


def test_exports_agree_with_the_trained_backbone(quickstart) -> None:
    _, workdir, _ = quickstart
    backbone, description = load_backbone(workdir / "pretrain")
    card = json.loads((workdir / "export" / "model_card.json").read_text())
    assert card["feature_dim"] == description.feature_dim == 256
    assert card["input_size"] == 32 and len(card["mean"]) == 3
    assert card["metrics"]["top1"] > 0
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = backbone(images).numpy()
    program = torch.export.load(workdir / "export" / "model.pt2")
    np.testing.assert_allclose(program.module()(images).detach().numpy(), expected, atol=1e-5)
    session = onnxruntime.InferenceSession(str(workdir / "export" / "model.onnx"))
    (onnx_features,) = session.run(None, {"images": images.numpy()})
    np.testing.assert_allclose(onnx_features, expected, atol=1e-4)


def test_ray_and_dali_leave_no_processes_behind(quickstart) -> None:
    _, _, output = quickstart
    ray_tmp = output.rsplit("\n", 1)[-1].split("/tmp/", 1)[-1]
    assert not _processes_mentioning(ray_tmp)


def _stage_files(workdir: Path) -> dict[Path, int]:
    """Every file the stages wrote (not the run's own record, ``run.store.RUN_FILE``)."""
    return {
        p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file() and p.parent != workdir
    }


def test_second_run_skips_every_stage(quickstart) -> None:
    spec, workdir, _ = quickstart
    before = _stage_files(workdir)
    started = time.perf_counter()
    result = _sslpipe("run", str(spec))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("up to date, skipped") == 4
    assert time.perf_counter() - started < 60
    assert _stage_files(workdir) == before


def test_misspelled_key_fails_before_anything_runs(tmp_path: Path) -> None:
    spec_text = (REPO / "pipelines/examples/quickstart.yaml").read_text()
    broken = spec_text.replace("workdir: runs/quickstart", f"workdir: {tmp_path / 'runs'}")
    broken = broken.replace("    epochs: 10", "    epochz: 10").replace(
        "val_fraction: 0.2", "val_fraction: lots"
    )
    spec = tmp_path / "broken.yaml"
    spec.write_text(broken)
    result = _sslpipe("run", str(spec))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    epochz_line = broken.splitlines().index("    epochz: 10") + 1
    assert lines[0].startswith(f"{spec}:")
    assert any(
        line.startswith(f"{spec}:{epochz_line}:5: stages[1].epochz: unknown key 'epochz'")
        and "did you mean 'epochs'" in line
        for line in lines
    ), lines
    assert any("stages[0].val_fraction" in line for line in lines)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()
