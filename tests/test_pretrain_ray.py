"""Real Ray Train runs: 2 CPU workers (gloo) each reading its own shard slice through DALI (the
torch loader's runs are ``test_retrain.py``'s nights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslpipe.pipelines.errors import UserError
from sslpipe.pipelines.runner import run_pipeline
from sslpipe.pipelines.spec import PipelineSpec
from sslpipe.ssl_ops import build_backbone

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


def test_two_worker_vicreg_run_trains_and_checkpoints(tmp_path: Path, ray_cleanup) -> None:
    run_pipeline(_spec(tmp_path / "runs"))
    _check_trained_and_checkpointed(tmp_path)


def _check_trained_and_checkpointed(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "pretrain"
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, 9))  # 2 epochs × 256 / 64
    assert {"loss", "invariance", "variance", "covariance", "lr"} <= set(history[0])
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    trained = torch.load(out / "backbone.pt", weights_only=True)
    torch.manual_seed(0)
    initial = build_backbone("small_cnn").state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if k.endswith("weight"))
    checkpoints = sorted((tmp_path / "runs" / "_ray").glob("pretrain-*/checkpoint_20*"))
    assert len(checkpoints) == 2  # one per epoch, num_to_keep=2


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
