"""A guard on a real Ray Train run: 2 CPU workers (gloo) each reading its own shard slice through
DALI. (The quickstart test checks a whole run's history and checkpoints; the torch loader's runs
are ``test_retrain.py``'s nights.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sslpipe.pipelines.errors import UserError
from sslpipe.pipelines.run.runner import run_pipeline
from sslpipe.pipelines.spec.pipeline import PipelineSpec

pytestmark = pytest.mark.slow


def _spec(workdir: Path, **pretrain: object) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "tiny",
            "workdir": str(workdir),
            "stages": [
                {
                    "name": "data",
                    "type": "ingest",
                    "source": {"kind": "synthetic", "num_images": 256, "image_size": 32},
                    "val_fraction": 0,
                    "shard_size": 64,
                },
                {
                    "name": "pretrain",
                    "type": "pretrain",
                    "data": "data",
                    "backbone": "small_cnn",
                    "projector": [64, 64],
                    "view_overrides": {"size": 24},
                    "epochs": 2,
                    "global_batch_size": 64,
                    "optimizer": "adamw",
                    "base_lr": 0.01,
                    "warmup_epochs": 0,
                    "num_workers": 2,
                    "dali_threads": 1,
                    "log_every_steps": 1,
                    **pretrain,
                },
            ],
        }
    )


def test_a_guard_stops_every_worker_once_and_is_not_retried(tmp_path: Path, ray_cleanup) -> None:
    """A collapse threshold no embedding can reach: the guard fires at the first check on
    every rank at once; with max_failures 1 the run still ends (no retry) with the reason."""
    spec = _spec(
        tmp_path / "runs",
        collapse_std_threshold=10.0,
        collapse_patience=1,
        monitor_every_steps=2,
        max_failures=1,
    )
    with pytest.raises(UserError, match=r"stopped by a guard at step 2: representation collapse"):
        run_pipeline(spec)
    state = json.loads((tmp_path / "runs" / "pretrain" / "state.json").read_text())
    assert state["status"] == "failed" and "representation collapse" in state["error"]
