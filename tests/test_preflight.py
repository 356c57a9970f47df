"""What ``plan`` and ``run`` check against the Ray cluster before any stage starts: a request
that can never be placed is one line naming the stage field to change (no Ray here: the
cluster's capacity is given as data, in the shape ``ray_runtime.cluster_capacity`` reads it)."""

from __future__ import annotations

from pathlib import Path

from sslpipe.pipelines.preflight import cpus_to_start_with, resource_problems
from sslpipe.pipelines.ray_runtime import Capacity
from sslpipe.pipelines.spec import load_spec
from sslpipe.pipelines.stages.base import ResourceRequest, StageConfig

SPEC = """\
name: cluster
workdir: runs/cluster
stages:
  - name: ingest
    type: ingest
    source: {kind: synthetic, num_images: 10}
  - name: train
    type: ingest
    source: {kind: synthetic, num_images: 10}
"""


class Trainer(StageConfig):
    """A stand-in stage with a worker group of ``workers`` × ``per_worker``."""

    workers: int
    per_worker: dict[str, float]
    gang: bool = True

    def resource_request(self) -> ResourceRequest:
        fields = {"workers": "num_workers", "GPU": "use_gpu", "CPU": "dali_threads"}
        return ResourceRequest(self.workers, self.per_worker, self.gang, fields)


def _problems(tmp_path: Path, capacity: Capacity, **request) -> list[str]:
    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "spec.yaml")
    stage = Trainer(name="train", **request)
    return [str(p) for p in resource_problems(spec, [stage], capacity)]


LAPTOP = Capacity(nodes=[{"CPU": 2.0, "memory": 8e9}], total={"CPU": 2.0, "memory": 8e9})
TWO_NODES = Capacity(
    nodes=[{"CPU": 16.0, "GPU": 4.0}, {"CPU": 16.0, "GPU": 4.0}], total={"CPU": 32.0, "GPU": 8.0}
)
AUTOSCALED = Capacity(
    nodes=[{"CPU": 0.0}, {"CPU": 96.0, "GPU": 8.0}], total={"CPU": 192.0, "GPU": 16.0},
    autoscaled=True,
)  # fmt: skip


def test_gpu_asked_where_ray_sees_none(tmp_path: Path) -> None:
    assert _problems(tmp_path, LAPTOP, workers=2, per_worker={"CPU": 1, "GPU": 1}) == [
        f"{tmp_path / 'spec.yaml'}:7:5: stages[1].use_gpu: asks for GPUs, but the Ray cluster "
        "has none; set use_gpu: false to run on CPUs, or run where Ray sees GPUs"
    ]


def test_more_workers_than_the_cluster_holds(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    assert _problems(tmp_path, TWO_NODES, workers=12, per_worker={"CPU": 2, "GPU": 1}) == [
        f"{spec}:7:5: stages[1].num_workers: 12 workers need 12 GPU at once, but the Ray "
        "cluster has 8; set num_workers: 8"
    ]
    # 30 of 32 CPUs in all, but a worker of 10 fits once per 16-CPU node: two at a time.
    assert _problems(tmp_path, TWO_NODES, workers=3, per_worker={"CPU": 10, "GPU": 1}) == [
        f"{spec}:7:5: stages[1].num_workers: 3 workers of 10 CPU + 1 GPU each, but the Ray "
        "cluster's nodes hold 2 at once; set num_workers: 2"
    ]
    assert _problems(tmp_path, TWO_NODES, workers=1, per_worker={"CPU": 20, "GPU": 1}) == [
        f"{spec}:7:5: stages[1].dali_threads: each worker needs 20 CPU, but the largest node has 16"
    ]
    # Ray tasks queue: one that fits is enough.
    assert _problems(tmp_path, TWO_NODES, workers=12, per_worker={"GPU": 1}, gang=False) == []


def test_an_autoscaler_counts_what_it_can_add(tmp_path: Path) -> None:
    assert _problems(tmp_path, AUTOSCALED, workers=16, per_worker={"CPU": 7, "GPU": 1}) == []
    assert _problems(tmp_path, AUTOSCALED, workers=32, per_worker={"CPU": 7, "GPU": 1}) == [
        f"{tmp_path / 'spec.yaml'}:7:5: stages[1].num_workers: 32 workers need 224 CPU at "
        "once, but the Ray cluster can grow to 192; set num_workers: 27"
    ]


def test_local_ray_starts_with_the_cpus_the_stages_ask_for() -> None:
    stages = [
        Trainer(name="a", workers=4, per_worker={"CPU": 3}),
        Trainer(name="b", workers=8, per_worker={"CPU": 2}, gang=False),
    ]
    assert cpus_to_start_with(stages) == 12
