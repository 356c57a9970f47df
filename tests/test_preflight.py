"""What ``plan`` and ``run`` check before any stage starts: a Ray request that can never be
placed is one line naming the stage field to change (no Ray here: the cluster's capacity is
given as data, in the shape ``ray_runtime.cluster_capacity`` reads it); a workdir that cannot
be written, is held by another run or is another spec's; and ``plan`` starts no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sslpipe.pipelines.cli.main import main
from sslpipe.pipelines.run.preflight import cpus_to_start_with, resource_problems
from sslpipe.pipelines.run.ray_runtime import Capacity
from sslpipe.pipelines.spec.pipeline import load_spec
from sslpipe.pipelines.stages.base import ResourceRequest, StageConfig

REPO = Path(__file__).resolve().parents[1]

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


def _plan(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["plan", str(spec)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def _spec_file(tmp_path: Path, name: str, workdir: Path) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        SPEC.replace("name: cluster", f"name: {name}").replace("runs/cluster", str(workdir))
    )
    return path


def test_plan_tells_the_truth_about_the_workdir(tmp_path: Path, capsys, monkeypatch) -> None:
    """A workdir that cannot be written (also for root: under /proc nothing can be made),
    one that another live run holds, one of another spec; each one line with its fix."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = _spec_file(tmp_path, "cluster", Path("/proc/sslpipe-plan/runs"))
    code, out, err = _plan(spec, capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"{spec}:2:1: workdir: /proc/sslpipe-plan/runs cannot be written: ")

    workdir = tmp_path / "runs"
    spec = _spec_file(tmp_path, "cluster", workdir)
    assert main(["run", str(spec)]) == 0
    capsys.readouterr()
    state = json.loads((workdir / "train" / "state.json").read_text())
    (workdir / "train" / "state.json").write_text(json.dumps({**state, "status": "running"}))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (workdir / ".lock").write_text(str(holder.pid))
        code, out, err = _plan(spec, capsys)
    finally:
        holder.kill()
        holder.wait()
    since = datetime.fromtimestamp((workdir / ".lock").stat().st_mtime, timezone.utc)
    assert code == 1 and out == ""
    assert err == (
        f"{spec}:2:1: workdir: {workdir} is in use by another run (pid {holder.pid}, since "
        f"{since.isoformat(timespec='seconds')}, running: train); wait for it (sslpipe status "
        f"{workdir}) or stop it (kill -INT {holder.pid})"
    )
    (workdir / "train" / "state.json").write_text(json.dumps(state))
    code, out, _ = _plan(spec, capsys)  # the lock of a process that is gone: no problem
    assert code == 0 and [line.split()[:2] for line in out.splitlines()] == [
        ["ingest", "skip"],
        ["train", "skip"],
    ]

    copy = _spec_file(tmp_path, "copy", workdir)
    code, out, err = _plan(copy, capsys)
    assert code == 2 and out == ""
    assert err == (
        f"{copy}:2:1: workdir: {workdir} holds the runs of spec 'cluster', not 'copy'; give this "
        "spec a workdir of its own, or rename it back to 'cluster' if it is the same pipeline"
    )


_NO_RAY = """
import sys
from sslpipe.pipelines.cli.main import main
print(main(["plan", "tests/specs/tiny.yaml", "--set", "pretrain.use_gpu=true"]))
print(main(["plan", "tests/specs/tiny.yaml"]))
print("ray imported:", "ray" in sys.modules)
"""


def test_plan_checks_resources_without_starting_ray(tmp_path: Path) -> None:
    """No ``RAY_ADDRESS``: checked against the Ray a run would start here (no GPU visible), and
    Ray is not even imported."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"CUDA_VISIBLE_DEVICES": "", "TINY_WORKDIR": str(tmp_path / "runs")}
    done = subprocess.run(
        [sys.executable, "-c", _NO_RAY], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.stderr.strip() == (
        "--set pretrain.use_gpu=true: stages[1].use_gpu: asks for GPUs, but the Ray cluster has "
        "none; set use_gpu: false to run on CPUs, or run where Ray sees GPUs"
    )
    out = done.stdout.splitlines()
    assert out[0] == "1"
    assert out[-3:] == [
        "resources checked against the Ray a run starts on this machine (0 GPUs; none started; "
        "set RAY_ADDRESS to check a cluster)",
        "0",
        "ray imported: False",
    ]
