"""``benchmarks/gpu_check.py``: every part of the GPU proof runs on the CPU at tiny sizes
(``--smoke``), through the same code as on a GPU, so the one GPU run a session may get is not
spent on a broken script; and the runner's own rules (deadline, a failing part, the JSON after
every part) on stand-in parts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402  (a script, not a package)


@pytest.mark.slow
def test_every_part_of_the_gpu_check_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    command = [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "budgets on one H100: imports 12 s" in run.stdout
    results = json.loads(out.read_text())
    assert [name for name in gpu_check.PART_NAMES if "error" in results[name]] == []
    assert results["imports"]["missing"] == []
    decode = results["decode"]
    assert [row["jpeg"] for row in decode["rows"]] == list(gpu_check.JPEG_CASES)
    assert all(row["shape_ok"] and row["backend"] == "cpu" for row in decode["rows"])
    assert "skipped" in decode and "skipped" in results["memory"]
    assert results["nccl"]["backend"] == "gloo" and results["nccl"]["ok"]
    steps = {row["name"]: row for row in results["step"]["rows"]}
    assert steps["vicreg_small_cnn_tf32"]["precision"] == "fp32+tf32"
    assert {"dino_vit_mini_patch4", "mae_vit_mini_patch4"} <= set(steps)
    assert all(row.get("loss_finite") or "skipped" in row for row in steps.values())
    covariance = results["covariance"]["rows"]
    assert [r["loss_precision"] for r in covariance] == ["fp32", "tf32", "bf16"]
    assert all(r["relative_error"] < 1e-2 for r in covariance)
    loader = results["loader"]
    assert {row["recipe"] for row in loader["rows"]} == {"vicreg", "pirl", "multicrop"}
    assert all(row["images_per_s"] > 0 for row in loader["rows"])
    assert loader["jpeg_backends"] == {"cpu": 1}
    bound = results["data_bound"]
    assert bound["ms_per_step_replay_before"] > 0 and bound["ms_per_step_replay_after"] > 0
    assert 0 <= bound["data_wait_share_real"] <= 1
    assert {"vicreg_images_per_s", "data_bound_share", "pirl_pirl_step",
            "simclr_multicrop_step", "preflight_decode"} <= set(results["targets"])  # fmt: skip
    assert results["targets"]["pirl_pirl_step"]["met"]
    assert results["targets"]["simclr_multicrop_step"]["met"]


def test_parts_past_the_deadline_are_skipped_and_the_json_follows_every_part(
    tmp_path: Path,
) -> None:
    out = tmp_path / "check.json"
    seen: list[list[str]] = []

    def passes(ctx: gpu_check.Context) -> dict[str, Any]:
        seen.append([k for k in json.loads(out.read_text()) if k in "abcd"] if out.exists() else [])
        return {"ok": True}

    def fails(ctx: gpu_check.Context) -> dict[str, Any]:
        raise RuntimeError("broken")

    parts = [
        gpu_check.Part("a", passes, 1),
        gpu_check.Part("b", fails, 1),
        gpu_check.Part("c", passes, 100),  # would end past the deadline
        gpu_check.Part("d", passes, 1, needs_data=True),  # no setup ran
        gpu_check.Part("e", passes, 1),
    ]
    ctx = gpu_check.Context(gpu_check.SMOKE, torch.device("cpu"), tmp_path)
    results = gpu_check.run_parts(parts, ctx, out, deadline=50)
    assert seen == [[], ["a", "b", "c", "d"]]  # e saw every earlier part on disk
    assert results["b"]["error"] == "RuntimeError: broken"
    assert results["c"]["skipped"].startswith("would overrun --deadline-s 50")
    assert results["d"]["skipped"].startswith("no data set")
    assert json.loads(out.read_text())["e"]["ok"]


@pytest.mark.parametrize("share", [-0.2, 0.01, 0.3])
def test_a_negative_data_bound_share_is_flagged_not_met(share: float) -> None:
    checks = gpu_check.targets({"data_bound": {"data_bound_share": share}})["data_bound_share"]
    assert checks["met"] == (share == 0.01)
    assert ("flag" in checks) == (share < 0)
