"""What crosses the Ray boundary from the driver to every training worker: one typed job."""

from __future__ import annotations

from typing import Any

import ray
from pydantic import BaseModel, ConfigDict

from ..stages.pretrain import PretrainConfig


@ray.remote(num_cpus=0)
class RunControl:
    """What the driver and the workers tell each other while a run goes on, across nodes.

    The driver requests a stop on SIGINT/SIGTERM; rank 0 reads the request at every sync point
    and the decision reaches every rank through the sync point's all-reduce. A guard that
    stops the run leaves its reason here for the driver (Ray Train keeps only the metrics
    reported with a checkpoint, and a guard stop reports none).
    """

    def __init__(self) -> None:
        self._stop = False
        self._guard: str | None = None

    def request_stop(self) -> None:
        self._stop = True

    def stop_requested(self) -> bool:
        return self._stop

    def record_guard(self, reason: str) -> None:
        self._guard = reason

    def guard(self) -> str | None:
        return self._guard


class PretrainJob(BaseModel):
    """The stage config and what the driver resolved for it."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    config: PretrainConfig
    shards: list[str]  # the train split's shards, absolute paths
    num_samples: int  # images in the train split (memory-bank rows)
    num_classes: int  # labelled classes (the online probe), ≤ 1 when unlabelled
    data_fingerprint: str
    warm_start: str | None  # safetensors backbone weights to start from
    control: Any  # a ``RunControl`` actor handle
    # A folder every node sees (from SSLPIPE_SAMPLE_LOG), or None: each rank appends to
    # rank-R.jsonl one line per step with the split indices it trained on, to check how the
    # samples are spread over ranks and nodes (tests/test_multinode.py).
    sample_log: str | None = None
    # Seconds each rank sleeps after every step (from SSLPIPE_STEP_PAUSE_S; 0 in real runs): a
    # test's tiny steps then take as long as real ones, so that a drain or a node loss the test
    # causes mid-run lands before the run has finished (tests/test_elastic.py).
    step_pause_s: float = 0.0
