"""Scheduled retraining on the real stack: ``--if-changed`` as cron runs it, the promotion
gate accepting and refusing, warm start from the registry, rollback, and the HTML report. The
nights pretrain and probe through the ``torch`` loader; every other pipeline test reads through
DALI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sslpipe
from sslpipe.datasets.sources import SyntheticShapesSource

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "specs" / "tiny.yaml"

pytestmark = pytest.mark.slow


def _add_images(folder: Path, count: int, seed: int) -> None:
    """``count`` labelled JPEGs as ``folder/<shape>/<key>.jpg``, new keys for a new seed."""
    source = SyntheticShapesSource(count, image_size=16, seed=seed)
    for item in source.items():
        sample = source.load(item)
        path = folder / source.classes[item.label] / f"s{seed}-{item.key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.image)


def _sslpipe(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "sslpipe.pipelines.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(result.stdout[-2000:], result.stderr[-2000:])
    return result


def _snapshot(workdir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}


def test_nightly_retrain_gate_rollback_and_report(tmp_path: Path, ray_cleanup) -> None:
    images, workdir, registry = tmp_path / "images", tmp_path / "runs", tmp_path / "registry"
    _add_images(images, 192, seed=0)
    nightly = [
        "run",
        str(TINY),
        "--if-changed",
        f"--set=workdir={workdir}",
        f"--set=stages.ingest.source={{kind: image_folder, path: {images}}}",
        f"--set=stages.pretrain.warm_start={registry}",
        "--set=stages.pretrain.epochs=1",
        f"--set=stages.export.promote={{registry: {registry}, metric: probe.top1}}",
        # The nights read through the torch loader (the other tests' runs use DALI).
        "--set=stages.pretrain.loader=torch",
        "--set=stages.probe.loader=torch",
    ]

    # Night 1: everything runs; the first model is promoted.
    first = _sslpipe(*nightly)
    assert first.returncode == 0
    assert f"{registry} has no promoted model yet: random init" in first.stdout
    assert "promoted as v0001: no model promoted yet" in first.stdout
    assert (registry / "latest").resolve() == registry / "v0001"
    _check_load_backbone(registry, workdir)

    # Night 2: nothing changed, nothing runs, nothing is touched; the check is recorded.
    before = _snapshot(workdir)
    started = time.perf_counter()
    second = _sslpipe(*nightly)
    assert second.returncode == 0
    assert second.stdout.strip() == "tiny: nothing changed since the last successful run"
    assert time.perf_counter() - started < 30
    checks = [json.loads(line) for line in (workdir / "checks.jsonl").open()]
    assert [bool(c["changed"]) for c in checks] == [True, False]
    assert _snapshot(workdir) == {**before, workdir / "checks.jsonl": _mtime(workdir)}

    # Night 3: new images arrive; the retrained model must beat v0001 by 100 points: refused.
    _add_images(images, 64, seed=1)
    third = _sslpipe(*nightly, "--set=stages.export.promote.min_delta=100")
    assert third.returncode == 0
    assert "[ingest] running: config or input changed" in third.stdout
    assert f"warm start from {registry / 'v0001'}" in third.stdout
    assert "not promoted: probe.top1" in third.stdout and "below the gate" in third.stdout
    assert (registry / "latest").resolve() == registry / "v0001"
    model = json.loads((workdir / "pretrain" / "model.json").read_text())
    assert model["warm_start"] == str(registry / "v0001" / "backbone.safetensors")

    # A looser gate changes only the export stage, which reruns and promotes.
    fourth = _sslpipe(*nightly, "--set=stages.export.promote.min_delta=-100")
    assert fourth.returncode == 0
    for stage in ("ingest", "pretrain", "probe"):
        assert f"[{stage}] up to date, skipped" in fourth.stdout
    assert "promoted as v0002: probe.top1" in fourth.stdout
    assert (registry / "latest").resolve() == registry / "v0002"
    decisions = [r["promoted"] for r in map(json.loads, (registry / "history.jsonl").open())]
    assert decisions == [True, False, True]

    # Roll back to v0001; the history keeps both the promotions and the rollback.
    rollback = _sslpipe("registry", "rollback", str(registry), "v0001")
    assert rollback.returncode == 0
    assert (registry / "latest").resolve() == registry / "v0001"
    assert sorted(p.name for p in registry.glob("v*")) == ["v0001", "v0002"]
    assert _sslpipe("registry", "rollback", str(registry), "v0009").returncode == 2

    # The report: one file, plots inlined, nothing fetched from elsewhere.
    report = _sslpipe("report", str(workdir))
    assert report.returncode == 0
    page = (workdir / "report.html").read_text()
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 2  # pretrain, confusion
    assert not re.search(r"(src|href)=['\"]?(http|//)", page)
    for text in ("pretrain", "probe", "succeeded", "--if-changed checks", "no change"):
        assert text in page
    manifest = json.loads((workdir / "ingest" / "manifest.json").read_text())
    for text in ("<th>spec</th><td>tiny</td>", f"<td>{sslpipe.__version__}</td>",
                 manifest["source_fingerprint"], f"path: {images}"):  # fmt: skip
        assert text in page, text


def _check_load_backbone(registry: Path, workdir: Path) -> None:
    """The promoted model, the export stage's and the pretrain stage's are the same network."""
    import torch

    promoted, card = sslpipe.load_backbone(registry)
    exported, _ = sslpipe.load_backbone(workdir)
    trained, description = sslpipe.load_backbone(workdir / "pretrain")
    assert card["backbone"] == description["backbone"] == "small_cnn"
    images = torch.randn(2, 3, card["input_size"], card["input_size"])
    with torch.no_grad():
        features = [net(images) for net in (promoted, exported, trained)]
    assert features[0].shape == (2, card["feature_dim"])
    for other in features[1:]:
        torch.testing.assert_close(features[0], other)


def _mtime(workdir: Path) -> int:
    return (workdir / "checks.jsonl").stat().st_mtime_ns
