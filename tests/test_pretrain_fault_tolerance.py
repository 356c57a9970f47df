"""Killing a Ray Train worker mid-epoch: the group restarts from the latest checkpoint and the
run still ends with exactly the configured number of optimizer steps."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from dist_utils import descendants

from sslpipe.pipelines.run.runner import run_pipeline
from sslpipe.pipelines.spec.pipeline import PipelineSpec

pytestmark = pytest.mark.slow


def _kill_a_worker_after_first_checkpoint(storage: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not killed:
        if list(storage.glob("pretrain-*/checkpoint_20*")):
            workers = [
                pid for pid, cmd in descendants(os.getpid()).items() if "RayTrainWorker" in cmd
            ]
            if workers:
                os.kill(max(workers), signal.SIGKILL)
                killed.append(max(workers))
                return
        time.sleep(0.2)


def test_worker_killed_mid_epoch_run_completes_exact_steps(tmp_path: Path, ray_cleanup) -> None:
    workdir = tmp_path / "runs"
    spec = PipelineSpec.model_validate(
        {
            "name": "faults",
            "workdir": str(workdir),
            "stages": [
                {
                    "name": "data",
                    "type": "ingest",
                    "source": {"kind": "synthetic", "num_images": 384, "image_size": 32},
                    "val_fraction": 0,
                },
                {
                    "name": "pretrain",
                    "type": "pretrain",
                    "data": "data",
                    "backbone": "small_cnn",
                    "projector": [32, 32],
                    "view_overrides": {"size": 16},
                    "epochs": 2,
                    "global_batch_size": 32,
                    "optimizer": "adamw",
                    "base_lr": 0.004,
                    "num_workers": 2,
                    "dali_threads": 1,
                    "checkpoint_every_steps": 3,
                    "log_every_steps": 1,
                    "max_failures": 1,
                    "collapse_std_threshold": 0,
                },
            ],
        }
    )
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint, args=(workdir / "_ray", killed)
    )
    killer.start()
    run_pipeline(spec)
    killer.join()
    assert killed, "no worker was killed: the test did not exercise a restart"
    history = (workdir / "pretrain" / "history.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in history]
    assert steps == list(range(1, 25))  # 2 epochs × 384/32, none lost, none repeated
    state = json.loads((workdir / "pretrain" / "state.json").read_text())
    assert state["metrics"]["step"] == 24
