"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``: a raylet per node), with
``sslpipe run`` joining them through ``RAY_ADDRESS`` as it joins a real cluster.

One run serves every test: pretraining on two worker nodes loses one of them after its first
checkpoint, and a new node joins. The head has no CPUs, as in ``deploy/``, and each worker node
has the CPUs of one pretrain worker (``dali_threads + 1``), so Ray must spread them. Which
samples a rank trained on comes from the pretrain workers' sample log (``SSLPIPE_SAMPLE_LOG``);
where the workers ran, from Ray's state API. The probe's tasks on two nodes, and its metrics
being those of one task, are ``tests/test_probe_parallel.py``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from dist_utils import descendants
from ray.cluster_utils import Cluster
from ray.util.state import list_actors
from ray_clusters import local_cluster

from sslpipe.pipelines.spec.pipeline import PipelineSpec

REPO = Path(__file__).resolve().parents[1]
NODE_CPUS = 2  # one pretrain worker: dali_threads 1 + 1
# 80 images of 10 shapes: a stratified 75/25 split gives 60 train, 20 val.
NUM_TRAIN, GLOBAL_BATCH, EPOCHS = 60, 20, 2
STEPS = EPOCHS * NUM_TRAIN // GLOBAL_BATCH

pytestmark = pytest.mark.slow


def _spec(workdir: Path) -> dict[str, Any]:
    """80 labelled 16-pixel images (60 train, 20 val) in shards of 20; a small CNN on two
    workers, 3 steps per epoch, a checkpoint every 2 (mid-epoch)."""
    return {
        "name": "multinode",
        "workdir": str(workdir),
        "stages": [
            {
                "name": "ingest",
                "type": "ingest",
                "source": {"kind": "synthetic", "num_images": 80, "image_size": 16},
                "shard_size": 20,
                "val_fraction": 0.25,
            },
            {
                "name": "pretrain",
                "type": "pretrain",
                "data": "ingest",
                "backbone": "small_cnn",
                "projector": [32, 32],
                "view_overrides": {"size": 16},
                "epochs": EPOCHS,
                "global_batch_size": GLOBAL_BATCH,
                "optimizer": "adamw",
                "base_lr": 0.004,
                "warmup_epochs": 0,
                "num_workers": 2,
                "dali_threads": 1,
                "log_every_steps": 1,
                "checkpoint_every_steps": 2,
                "max_failures": 1,
            },
        ],
    }


def _sslpipe_run(cluster: Cluster, spec: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        "SSLPIPE_SAMPLE_LOG": str(log),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "sslpipe.pipelines.cli", "run", str(spec)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(run: subprocess.Popen) -> str:
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-4000:]
    return output


def _train_workers() -> list[int]:
    return [pid for pid, cmd in descendants(os.getpid()).items() if "RayTrainWorker" in cmd]


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _node_to_lose(cluster: Cluster) -> Any:
    """The worker node whose loss hurts most: one that holds an actor of the run besides its
    training workers (the run's own state, which should live with the driver), if any."""
    actors = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")], detail=True)
    extra = {actor.node_id for actor in actors if actor.class_name != "RayTrainWorker"}
    return min(cluster.worker_nodes, key=lambda node: (node.node_id not in extra, node.node_id))


@dataclass
class MultinodeRun:
    cluster: Cluster
    workdir: Path
    sample_log: Path
    lost: str  # node id of the node removed mid-pretrain
    joined: str  # node id of the node that replaced it


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultinodeRun]:
    base = tmp_path_factory.mktemp("multinode")
    spec, workdir, log = base / "multinode.yaml", base / "runs", base / "samples"
    spec.write_text(yaml.safe_dump(_spec(workdir), sort_keys=False))
    stages = PipelineSpec.model_validate(_spec(workdir)).stages
    assert stages[1].cpus_per_worker() == NODE_CPUS
    temp_dir = Path("/tmp") / f"sslmn-{os.getpid()}"  # short: Ray's socket paths must fit
    node = {"num_cpus": NODE_CPUS}
    with local_cluster(temp_dir, head={"num_cpus": 0}, nodes=[node, node]) as cluster:
        pretrain = _sslpipe_run(cluster, spec, log)
        deadline = time.monotonic() + 300
        while not list((workdir / "_ray").glob("pretrain-*/checkpoint_*")):
            assert pretrain.poll() is None, pretrain.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
            time.sleep(0.05)
        # Freeze training, so that the node goes at a known point (before the run ends).
        workers = _train_workers()
        _signal_all(workers, signal.SIGSTOP)
        lost = _node_to_lose(cluster)
        cluster.remove_node(lost, allow_graceful=False)  # its raylet and its worker die
        joined = cluster.add_node(**node)
        _signal_all(workers, signal.SIGCONT)
        _finish(pretrain)
        yield MultinodeRun(cluster, workdir, log, lost.node_id, joined.node_id)


def _worker_groups(cluster: Cluster) -> list[set[str]]:
    """The node ids of each Ray Train worker group the cluster ran (a group has its own
    placement group; after a failure Ray Train starts a whole new group)."""
    actors = list_actors(
        address=cluster.address, filters=[("class_name", "=", "RayTrainWorker")], detail=True
    )
    groups: dict[str, list[str]] = {}
    for actor in actors:
        groups.setdefault(actor.placement_group_id, []).append(actor.node_id)
    return [set(nodes) for nodes in groups.values() if len(nodes) == 2]


def _samples_per_epoch(sample_log: Path) -> dict[int, dict[int, list[int]]]:
    """epoch → rank → the split indices that rank trained on; where a step was trained twice
    (before and after a restart) the later record counts."""
    steps: dict[tuple[int, int], dict[str, Any]] = {}
    for rank_log in sorted(sample_log.glob("rank-*.jsonl")):
        rank = int(rank_log.stem.split("-")[1])
        for line in rank_log.read_text().splitlines():
            record = json.loads(line)
            steps[rank, record["step"]] = record
    epochs: dict[int, dict[int, list[int]]] = {}
    for (rank, _), record in sorted(steps.items()):
        epochs.setdefault(record["epoch"], {}).setdefault(rank, []).extend(record["indices"])
    return epochs


def test_ranks_on_two_nodes_read_disjoint_samples_every_sample_once_per_epoch(
    run: MultinodeRun,
) -> None:
    manifest = json.loads((run.workdir / "ingest" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_samples"] == NUM_TRAIN  # no sample dropped
    (first,) = [group for group in _worker_groups(run.cluster) if run.lost in group]
    assert len(first) == 2, first  # one rank per node
    epochs = _samples_per_epoch(run.sample_log)
    assert sorted(epochs) == list(range(EPOCHS))
    for epoch, ranks in epochs.items():
        assert sorted(ranks) == [0, 1], epoch
        first, second = set(ranks[0]), set(ranks[1])
        assert len(first) == len(ranks[0]) == NUM_TRAIN // 2, (epoch, ranks[0])
        assert not first & second, f"epoch {epoch}: both ranks read {sorted(first & second)}"
        assert first | second == set(range(NUM_TRAIN)), epoch


def test_node_lost_mid_pretrain_run_ends_with_every_step_once(run: MultinodeRun) -> None:
    groups = _worker_groups(run.cluster)
    assert len(groups) == 2, groups  # one restart
    before, after = sorted(groups, key=lambda nodes: run.lost not in nodes)
    assert run.lost in before and run.joined in after and len(after) == 2
    assert before & after, "the surviving node takes part in both groups"
    history = (run.workdir / "pretrain" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == list(range(1, STEPS + 1))
    state = json.loads((run.workdir / "pretrain" / "state.json").read_text())
    assert state["metrics"]["step"] == STEPS
