"""``import sslpipe``: the Python API takes the command line's paths (same checks, same
errors, same outputs) and importing it loads nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import sslpipe

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "nvidia", "onnx", "onnxruntime", "matplotlib", "safetensors")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter has imported after ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1].replace("'", '"'))
    return [name for name in HEAVY if name in loaded]


def test_import_sslpipe_is_light() -> None:
    assert heavy_modules_after("import sslpipe") == []


def _spec(workdir: Path) -> dict:
    source = {"kind": "synthetic", "num_images": 16, "image_size": 16}
    return {
        "name": "api",
        "workdir": str(workdir),
        "stages": [
            {"name": "a", "type": "ingest", "source": source, "val_fraction": 0.25},
            {"name": "b", "type": "ingest", "source": source, "val_fraction": 0.5},
        ],
    }


def test_run_and_plan_from_python(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "runs")
    assert [r.reason for r in sslpipe.plan(spec)] == ["never ran", "never ran"]
    results = sslpipe.run(spec, set={"stages.a.source.num_images": 40})
    assert [(r.name, r.ran) for r in results] == [("a", True), ("b", True)]
    assert results[0].metrics == {"train": 30, "val": 10, "rejected": 0}
    assert results[1].metrics == {"train": 10, "val": 6, "rejected": 0}  # only a was set
    assert results[0].outputs == [tmp_path / "runs" / "a" / "manifest.json"]
    # The same spec from a file, through the command line's own loader and --set syntax.
    path = tmp_path / "spec.json.yaml"
    path.write_text(json.dumps(spec))
    plan = sslpipe.plan(path, set=["stages.a.source.num_images=40"], force=["b"])
    assert [(r.name, r.reason) for r in plan] == [("a", None), ("b", "forced")]
    again = sslpipe.run(path, set={"stages.a.source.num_images": 40})
    assert [(r.ran, r.reason) for r in again] == [(False, None), (False, None)]


def test_mistakes_raise_the_command_lines_errors(tmp_path: Path) -> None:
    with pytest.raises(sslpipe.SpecError) as raised:
        sslpipe.validate(_spec(tmp_path), set={"stages.a.val_fraction": 2}, force=["c"])
    assert [str(p) for p in raised.value.problems] == [
        "--force c: no stage named 'c' (stages: a, b)",
        "--set stages.a.val_fraction=2: stages[0].val_fraction: must be less than 1, got 2",
    ]
    with pytest.raises(sslpipe.UsageError, match="not a model registry, an export or pretrain"):
        sslpipe.load_backbone(tmp_path)


def test_ingest_from_python(tmp_path: Path) -> None:
    manifest = sslpipe.ingest("synthetic:12", tmp_path / "shards", shard_size="1MB", workers=1)
    assert manifest["num_samples"] == 12 and manifest["params"]["shard_bytes"] == 1_000_000
    with pytest.raises(sslpipe.UserError, match="does not exist"):
        sslpipe.ingest(tmp_path / "nothing", tmp_path / "more")


def test_validate_imports_nothing_heavy() -> None:
    """``sslpipe validate`` as a pre-commit hook or CI check: no torch, Ray, DALI, onnx."""
    examples = sorted(str(p) for p in (REPO / "pipelines" / "examples").glob("*.yaml"))
    code = "from sslpipe.pipelines.cli import main\n" + "\n".join(
        f"assert main(['validate', {path!r}]) == 0" for path in examples
    )
    assert heavy_modules_after(f"import os\nos.chdir({str(REPO)!r})\n{code}") == []
