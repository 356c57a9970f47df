"""PIRL through the pretrain stage: 2 Ray Train CPU workers, real DALI jigsaw views, the
memory bank indexed by the shards' ``KEY.index.i64``. A run stopped by SIGTERM after its first
step and resumed keeps the bank it checkpointed: rows of the images seen before the stop are
exactly the checkpointed ones, the others are updated by the rest of the epoch, Z stays
frozen."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sslpipe.pipelines.run.runner import run_pipeline
from sslpipe.pipelines.spec.pipeline import PipelineSpec
from sslpipe.ssl_ops import MemoryBank

pytestmark = pytest.mark.slow

NUM_IMAGES = 64


def _spec(workdir: Path) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": "pirl",
            "workdir": str(workdir),
            "stages": [
                {
                    "name": "data",
                    "type": "ingest",
                    "source": {"kind": "synthetic", "num_images": NUM_IMAGES, "image_size": 32},
                    "val_fraction": 0,
                    "shard_size": 16,
                },
                {
                    "name": "pretrain",
                    "type": "pretrain",
                    "data": "data",
                    "method": "pirl",
                    "views": "pirl_cifar",
                    "backbone": "small_cnn",
                    "projector": [32],
                    "loss": {"num_negatives": 128},
                    "epochs": 1,
                    "global_batch_size": 16,
                    "base_lr": 0.05,
                    "warmup_epochs": 0,
                    "num_workers": 2,
                    "dali_threads": 1,
                    "log_every_steps": 1,
                },
            ],
        }
    )


def _final_state(workdir: Path) -> dict[str, Any]:
    checkpoints = sorted((workdir / "_ray").glob("pretrain-*/checkpoint_20*"))
    return torch.load(checkpoints[-1] / "state.pt", weights_only=False)


def _sigterm_once_training_starts(storage: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(storage.glob("pretrain-*")):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


def test_memory_bank_survives_stop_and_resume(tmp_path: Path, ray_cleanup) -> None:
    stopper = threading.Thread(target=_sigterm_once_training_starts, args=(tmp_path / "_ray",))
    stopper.start()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_spec(tmp_path))
    stopper.join()
    stopped = _final_state(tmp_path)
    assert 0 < stopped["step"] < 4  # one epoch: 64 images / 16

    run_pipeline(_spec(tmp_path))
    final = _final_state(tmp_path)
    assert final["step"] == 4
    initial = MemoryBank(NUM_IMAGES, 32, seed=0).rows
    before, after = stopped["method"]["bank.rows"], final["method"]["bank.rows"]
    seen_before_stop = (before != initial).any(dim=1)
    assert seen_before_stop.sum() == 16 * stopped["step"]
    assert torch.equal(after[seen_before_stop], before[seen_before_stop])
    assert (after[~seen_before_stop] != before[~seen_before_stop]).any(dim=1).all()
    assert torch.allclose(after.norm(dim=1), torch.ones(NUM_IMAGES))
    assert torch.equal(final["method"]["bank.log_z"], stopped["method"]["bank.log_z"])
    assert torch.isfinite(final["method"]["bank.log_z"])
