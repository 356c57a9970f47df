"""The runner's caching: skip what is up to date, rerun what changed, --force and downstream."""

from __future__ import annotations

import json
from pathlib import Path

from sslpipe.pipelines.runner import run_pipeline
from sslpipe.pipelines.spec import PipelineSpec


def _spec(workdir: Path, num_images: int) -> PipelineSpec:
    source = {"kind": "synthetic", "num_images": num_images, "image_size": 16}
    return PipelineSpec.model_validate(
        {
            "name": "cache",
            "workdir": str(workdir),
            "stages": [
                {"name": "a", "type": "ingest", "source": source, "val_fraction": 0.5},
                {"name": "b", "type": "ingest", "source": source, "val_fraction": 0.25},
            ],
        }
    )


def _started(workdir: Path) -> dict[str, str]:
    return {s: json.loads((workdir / s / "state.json").read_text())["started"] for s in "ab"}


def test_skip_rerun_on_change_and_force(tmp_path: Path, capsys) -> None:
    run_pipeline(_spec(tmp_path, 20))
    first = (tmp_path / "a" / "manifest.json").read_text()
    run_pipeline(_spec(tmp_path, 20))
    assert capsys.readouterr().out.count("up to date, skipped") == 2
    run_pipeline(_spec(tmp_path, 30))
    out = capsys.readouterr().out
    assert "[a] running: config or input changed" in out
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["num_samples"] == 30
    assert first != (tmp_path / "a" / "manifest.json").read_text()
    run_pipeline(_spec(tmp_path, 30), force=("b",))
    out = capsys.readouterr().out
    assert "[a] up to date, skipped" in out and "[b] running: forced" in out
    assert not (tmp_path / ".lock").exists()
