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


def test_plan_and_status_commands(tmp_path: Path, capsys) -> None:
    import yaml

    from sslpipe.pipelines.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(tmp_path / "runs", 20).model_dump(mode="json")))
    assert main(["plan", str(spec)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["a", "run"], ["b", "run"]]
    assert not (tmp_path / "runs" / "a").exists(), "plan must not run anything"
    assert main(["status", str(tmp_path / "runs")]) == 2
    assert "runs is not a folder: give the spec's workdir" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    assert main(["status", str(tmp_path / "runs")]) == 1
    assert "no stage has run here" in capsys.readouterr().err
    assert main(["run", str(spec)]) == 0
    capsys.readouterr()
    assert main(["plan", str(spec), "--force", "a"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["a", "run", "forced"]
    assert out[1].split()[:2] == ["b", "skip"]  # b does not read a
    assert main(["status", str(tmp_path / "runs")]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[:2] for row in rows] == [["a", "succeeded"], ["b", "succeeded"]]
