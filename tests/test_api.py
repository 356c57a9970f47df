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
    code = "from sslpipe.pipelines.cli.main import main\n" + "\n".join(
        f"assert main(['validate', {path!r}]) == 0" for path in examples
    )
    assert heavy_modules_after(f"import os\nos.chdir({str(REPO)!r})\n{code}") == []


PIPES = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
UNGUARDED = """\
import sslpipe

manifest = sslpipe.ingest("synthetic:48", {out!r}, shard_size=8, workers=2)
print("ingested", manifest["num_samples"])
"""


def test_api_runs_unguarded_as_a_script_from_stdin_and_as_a_kernel(tmp_path: Path) -> None:
    """The ingest workers must not run the caller's main module again: a script without a
    ``__main__`` guard, code piped to ``python -``, and a module started with ``python -m``
    (as Jupyter starts its kernel, whose cells run in the main module) each ingest once."""
    (tmp_path / "script.py").write_text(UNGUARDED.format(out=str(tmp_path / "a")))
    (tmp_path / "kernel.py").write_text(UNGUARDED.format(out=str(tmp_path / "c")))
    ways = {
        "script": ([sys.executable, "script.py"], None),
        "stdin": ([sys.executable, "-"], UNGUARDED.format(out=str(tmp_path / "b"))),
        "kernel": ([sys.executable, "-m", "kernel"], None),
    }
    running = {
        way: (subprocess.Popen(command, cwd=tmp_path, text=True, **PIPES), code)
        for way, (command, code) in ways.items()
    }
    for way, (process, code) in running.items():
        try:
            out, _ = process.communicate(code, timeout=120)
        finally:
            process.kill()
        assert process.returncode == 0, (way, out)
        assert "Traceback" not in out and out.count("ingested") == 1, (way, out)
        assert out.splitlines()[-1] == "ingested 48", (way, out)
