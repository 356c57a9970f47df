"""``benchmarks/gpu_check.py --smoke``: every part of the GPU proof runs, on the CPU, at tiny
sizes, through the same code as on a GPU (so the one GPU run a session may get is not spent
on a broken script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_every_part_of_the_gpu_check_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    command = [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    parts = ("step", "loss", "loader", "data_bound", "methods", "probe")
    assert [name for name in parts if "error" in results[name]] == []
    assert all(row["loss_finite"] for row in results["step"]["rows"])
    assert [r["loss_precision"] for r in results["loss"]["rows"]] == ["fp32", "tf32", "bf16"]
    assert all(r["relative_error"] < 1e-2 for r in results["loss"]["rows"])
    recipes = {row["recipe"] for row in results["loader"]["rows"]}
    assert recipes == {"vicreg", "pirl", "multicrop"}
    assert all(row["images_per_s"] > 0 for row in results["loader"]["rows"])
    assert results["data_bound"]["ms_per_step_replay"] > 0
    assert set(results["targets"]) == {
        "vicreg_images_per_s", "data_bound_share", "pirl_pirl_step", "simclr_multicrop_step"
    }  # fmt: skip
    assert results["targets"]["pirl_pirl_step"]["met"]
    assert results["targets"]["simclr_multicrop_step"]["met"]
