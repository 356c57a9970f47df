"""An elastic worker group (``num_workers: {min: 1, max: 3}``) on a ``ray.cluster_utils.Cluster``
of three worker nodes, through ``sslpipe run`` joining it as it joins a real cluster.

One run serves the cluster tests (three worker-group starts, the fewest that show it all). It
starts on three nodes; mid-epoch a node is drained with a deadline, as a spot reclaim announces
itself: the group checkpoints, the node is removed with no replacement and the run goes on with
two workers; then a node is added and the run grows back to three. Which samples each step
trained on comes from the workers' sample log (``SSLPIPE_SAMPLE_LOG``); the reference, a run
that never changed size, is the same steps in this process with one worker (``training.step``,
as the workers run them). The loader tests re-split an epoch over groups of other sizes
without Ray, on both backends.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from ray.cluster_utils import Cluster
from ray.util.state import list_actors
from ray_clusters import local_cluster

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.loaders import EpochPlan, LoaderConfig, build_loader, resume_state
from sslpipe.datasets.recipes import ViewRecipe
from sslpipe.datasets.sources import SyntheticShapesSource
from sslpipe.pipelines.spec.pipeline import PipelineSpec
from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.pipelines.training.step import (
    build_scheduler,
    build_training_method,
    build_training_optimizer,
    train_step,
)
from sslpipe.ssl_ops import Batch
from sslpipe.ssl_ops import Progress as StepProgress

REPO = Path(__file__).resolve().parents[1]
NODE_CPUS = 2  # one pretrain worker: dali_threads 1 + 1
NUM_TRAIN, GLOBAL_BATCH, EPOCHS = 72, 6, 2  # 1, 2 and 3 workers all divide the batch
STEPS_PER_EPOCH = NUM_TRAIN // GLOBAL_BATCH
STEPS = EPOCHS * STEPS_PER_EPOCH
# The drained node's deadline (a spot notice gives 30 s to 2 min). After its drain checkpoint
# the group waits for it: Ray Train restarts the group when it has passed.
DRAIN_NOTICE_S = 10
# Loss-curve tolerance (relative), derived in test_loss_curve_matches_an_unresized_run.
LOSS_RTOL = 1e-3

TINY = [ViewRecipe(size=8, crop_scale=(0.5, 1.0), blur_p=0)]


def _spec(workdir: Path) -> dict[str, Any]:
    """72 labelled 16-pixel images; a small CNN, 12 steps per epoch, a checkpoint every 4."""
    return {
        "name": "elastic",
        "workdir": str(workdir),
        "stages": [
            {
                "name": "ingest",
                "type": "ingest",
                "source": {"kind": "synthetic", "num_images": NUM_TRAIN, "image_size": 16},
                "shard_size": 24,
                "val_fraction": 0,
            },
            {
                "name": "pretrain",
                "type": "pretrain",
                "data": "ingest",
                "loader": "torch",
                "backbone": "small_cnn",
                "projector": [32, 32],
                "view_overrides": {"size": 16},
                "epochs": EPOCHS,
                "global_batch_size": GLOBAL_BATCH,
                "optimizer": "adamw",
                "base_lr": 0.004,
                "warmup_epochs": 0,
                "num_workers": {"min": 1, "max": 3},
                "placement_strategy": "SPREAD",
                "resize_check_seconds": 1,
                "dali_threads": 1,
                "log_every_steps": 1,
                "checkpoint_every_steps": 4,
                "max_failures": 3,
            },
        ],
    }


@dataclass
class ElasticRun:
    workdir: Path
    output: str
    records: list[dict[str, Any]]  # the sample log: one per rank and step trained
    drained: str  # node drained, then removed with no replacement
    drain_checkpoint_step: int  # the step the group checkpointed at on the drain notice
    removed_at: float  # when the drained node was removed, once that checkpoint was registered
    joined: str  # node added afterwards
    added_at: float
    checkpoints: dict[int, float]  # step → when its checkpoint folder was first seen


def _records(sample_log: Path) -> list[dict[str, Any]]:
    records = []
    for rank_log in sorted(sample_log.glob("rank-*.jsonl")):
        rank = int(rank_log.stem.split("-")[1])
        for line in rank_log.read_text().splitlines():
            if line.endswith("}"):  # a line being written is not read
                records.append({**json.loads(line), "rank": rank})
    return records


def _worker_nodes(cluster: Cluster) -> list[str]:
    """Node ids of the run's live training workers."""
    actors = list_actors(
        address=cluster.address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        detail=True,
    )
    return sorted({actor.node_id for actor in actors})


def _drain(cluster: Cluster, node_id: str, notice_s: float) -> None:
    """What a cloud's spot reclaim does through the autoscaler: Ray's drain API with the
    reason PREEMPTION and the deadline after which the node is gone."""
    import ray
    from ray.core.generated import autoscaler_pb2

    client = ray._raylet.GcsClient(address=cluster.address)
    accepted, why = client.drain_node(
        node_id,
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "test: spot reclaim",
        int((time.time() + notice_s) * 1000),
    )
    assert accepted, why


class _Watch:
    """Polls the run's files until a condition holds; fails with the run's output if the run
    ends first or the condition takes too long."""

    def __init__(self, run: subprocess.Popen, output: Path, ray_dir: Path) -> None:
        self.run, self.output, self.ray_dir = run, output, ray_dir
        self.checkpoints: dict[int, float] = {}

    def until(self, condition: Callable[[], Any], what: str, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := condition()):
            self._note_checkpoints()
            assert self.run.poll() is None, f"run ended before {what}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{self.tail()}"
            time.sleep(0.05)
        self._note_checkpoints()
        return found

    def _note_checkpoints(self) -> None:
        for folder in self.ray_dir.glob("pretrain-*/checkpoint_*"):
            history = folder / "history.jsonl"
            with contextlib.suppress(OSError, ValueError, IndexError):  # being written
                step = json.loads(history.read_text().splitlines()[-1])["step"]
                self.checkpoints.setdefault(step, time.time())

    def registered_step(self) -> int | None:
        """The step of the latest checkpoint Ray Train has registered (the one a restart
        resumes from), from its ``checkpoint_manager_snapshot.json``."""
        with contextlib.suppress(OSError, ValueError, StopIteration, KeyError, TypeError):
            snapshot = next(self.ray_dir.glob("pretrain-*/checkpoint_manager_snapshot.json"))
            return json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]["step"]
        return None

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("shards")
    ingest(SyntheticShapesSource(NUM_TRAIN, image_size=16), out, shard_size=24, val_fraction=0)
    return split_shards(out, "train")


def _group(
    backend: str, shards: list[Path], world: int, states: list[dict[str, Any]] | None = None
) -> list[Any]:
    """The loaders of a group of ``world`` ranks, resumed from a group's saved states."""
    return [
        build_loader(
            backend,
            shards,
            TINY,
            LoaderConfig(
                batch_size=GLOBAL_BATCH // world,
                shard_id=rank,
                num_shards=world,
                seed=7,
                with_index=True,
                num_threads=1 if backend == "dali" else 0,
            ),
            checkpoint=resume_state(states, rank, world),
        )
        for rank in range(world)
    ]


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_a_group_of_another_size_continues_the_epoch_with_the_samples_not_seen(
    backend: str, shards: list[Path]
) -> None:
    """Two ranks train two steps, three ranks the rest of the epoch, one rank the next epoch:
    every step is the global batch of a group that never changed size."""
    two = _group(backend, shards, 2)
    batches = [iter(loader) for loader in two]
    steps = [[next(ranks) for ranks in batches] for _ in range(2)]
    three = _group(backend, shards, 3, [loader.state_dict() for loader in two])
    steps += list(zip(*(list(loader) for loader in three), strict=True))
    one = _group(backend, shards, 1, [loader.state_dict() for loader in three])
    steps += [(batch,) for batch in one[0]]
    plan = EpochPlan(NUM_TRAIN, LoaderConfig(batch_size=GLOBAL_BATCH, seed=7))
    expected = [plan.rank_samples(e, s).tolist() for e in range(2) for s in range(STEPS_PER_EPOCH)]
    got = [[int(i) for _, _, indices in ranks for i in indices] for ranks in steps]
    assert got == expected
    assert sorted(i for step in got[:STEPS_PER_EPOCH] for i in step) == list(range(NUM_TRAIN))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ElasticRun]:
    base = tmp_path_factory.mktemp("elastic")
    spec, workdir, log = base / "elastic.yaml", base / "runs", base / "samples"
    spec.write_text(yaml.safe_dump(_spec(workdir), sort_keys=False))
    assert PipelineSpec.model_validate(_spec(workdir)).stages[1].cpus_per_worker() == NODE_CPUS
    output = base / "output.txt"
    temp_dir = Path("/tmp") / f"sslel-{os.getpid()}"  # short: Ray's socket paths must fit
    node = {"num_cpus": NODE_CPUS}
    env = {
        **os.environ,
        "SSLPIPE_SAMPLE_LOG": str(log),
        # Steps as slow as real ones (a tiny CNN step takes ~0.1 s here): the drain notice is
        # seen within a second, long before the run's 24 steps are done.
        "SSLPIPE_STEP_PAUSE_S": "0.25",
        # Ray Train's preemption watcher polls the drained nodes every 0.5 s instead of 5 s
        # (its controller polls the workers as often: tests/conftest.py).
        "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5",
    }
    with local_cluster(temp_dir, head={"num_cpus": 0}, nodes=[node] * 3) as cluster:
        env["RAY_ADDRESS"] = cluster.address
        with output.open("w") as out:
            pretrain = subprocess.Popen(
                [sys.executable, "-m", "sslpipe.pipelines.cli", "run", str(spec)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        watch = _Watch(pretrain, output, workdir / "_ray")
        try:
            # 1. Three workers train; a node of the group is drained, as a spot reclaim
            #    announces itself: the group checkpoints (mid-epoch) before the node goes.
            watch.until(lambda: any(r["world"] == 3 for r in _records(log)), "step on three")
            drained = _worker_nodes(cluster)[0]
            _drain(cluster, drained, DRAIN_NOTICE_S)
            line = watch.until(
                lambda: next(
                    (x for x in output.read_text().splitlines() if "being drained" in x), None
                ),
                "checkpoint on the drain notice",
            )
            drain_step = int(line.split("checkpoint at step ")[1].split(",")[0])
            watch.until(lambda: watch.registered_step() == drain_step, "checkpoint registered")
            # 2. The node goes, with no replacement: the run goes on with two workers. (Its
            #    raylet stops and its worker dies with it; the raylet tells the GCS on its way
            #    out, as a node that crashed is found by the GCS's health checks ~15 s later.)
            (drained_node,) = [n for n in cluster.worker_nodes if n.node_id == drained]
            removed_at = time.time()
            cluster.remove_node(drained_node, allow_graceful=True)
            watch.until(lambda: any(r["world"] == 2 for r in _records(log)), "step on two")
            # 3. A node joins: the group grows back to three.
            added_at = time.time()
            joined = cluster.add_node(**node).node_id
            watch.until(
                lambda: any(r["world"] == 3 and r["time"] > added_at for r in _records(log)),
                "step on three after the join",
            )
            pretrain.wait(timeout=300)
        finally:
            if pretrain.poll() is None:
                pretrain.kill()
        assert pretrain.returncode == 0, watch.tail()
        yield ElasticRun(
            workdir,
            output.read_text(),
            _records(log),
            drained,
            drain_step,
            removed_at,
            joined,
            added_at,
            watch.checkpoints,
        )


def _groups(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records of each worker group in the order the groups ran (a group's processes are
    new: a restart, a resize)."""
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        by_pid.setdefault(record["pid"], []).append(record)
    groups: list[list[dict[str, Any]]] = []
    start: dict[str, Any] = {}
    for pid_records in sorted(by_pid.values(), key=lambda rs: min(r["time"] for r in rs)):
        first = min(pid_records, key=lambda r: r["time"])
        # The ranks of one group train their first step, the same one, together; the next
        # group starts seconds later (a restart).
        same = (first["step"], first["world"]) == (start.get("step"), start.get("world"))
        if groups and same and first["time"] - start["time"] < 2:
            groups[-1].extend(pid_records)
        else:
            groups.append(list(pid_records))
            start = first
    return groups


def _final_steps(records: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """step → the records of the last group that trained it (its result is the one kept)."""
    final: dict[int, list[dict[str, Any]]] = {}
    for group in _groups(records):
        for step in {r["step"] for r in group}:
            final[step] = [r for r in group if r["step"] == step]
    return final


@pytest.mark.slow
def test_group_shrinks_without_replacement_and_grows_back(run: ElasticRun) -> None:
    groups = _groups(run.records)
    assert [group[0]["world"] for group in groups] == [3, 2, 3]
    shrunk, grown = groups[1], groups[2]
    assert min(r["time"] for r in shrunk) > run.removed_at
    assert min(r["time"] for r in grown) > run.added_at
    assert "on 3 worker(s)" in run.output.split("resumed from step")[-1]


@pytest.mark.slow
def test_every_step_trained_once_by_the_run_that_finished(run: ElasticRun) -> None:
    history = (run.workdir / "pretrain" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == list(range(1, STEPS + 1))
    state = json.loads((run.workdir / "pretrain" / "state.json").read_text())
    assert state["metrics"]["step"] == STEPS
    final = _final_steps(run.records)
    assert sorted(final) == list(range(1, STEPS + 1))
    for step, records in final.items():
        assert sorted(r["rank"] for r in records) == list(range(records[0]["world"])), step


@pytest.mark.slow
def test_every_sample_once_per_epoch_in_the_unresized_order(run: ElasticRun) -> None:
    plan = EpochPlan(NUM_TRAIN, LoaderConfig(batch_size=GLOBAL_BATCH, seed=0))
    final = _final_steps(run.records)
    for epoch in range(EPOCHS):
        order = plan.order(epoch)
        seen = []
        for step in range(STEPS_PER_EPOCH):
            records = sorted(final[epoch * STEPS_PER_EPOCH + step + 1], key=lambda r: r["rank"])
            assert {r["epoch"] for r in records} == {epoch}
            batch = [i for r in records for i in r["indices"]]
            assert batch == plan.rank_samples(epoch, step, order).tolist(), (epoch, step)
            seen += batch
        assert sorted(seen) == list(range(NUM_TRAIN)), f"epoch {epoch}"


@pytest.mark.slow
def test_drained_node_checkpoint_precedes_its_removal_no_step_lost_or_repeated(
    run: ElasticRun,
) -> None:
    step = run.drain_checkpoint_step
    assert 0 < step < STEPS_PER_EPOCH  # mid-epoch
    assert run.checkpoints[step] < run.removed_at
    drained_group, after = _groups(run.records)[:2]
    # The drained group trained up to its checkpoint and no further; the next group starts
    # right after it.
    assert max(r["step"] for r in drained_group) == step
    assert min(r["step"] for r in after) == step + 1
    assert f"resumed from step {step}/{STEPS} on 2 worker(s)" in run.output


def _reference_losses(run: ElasticRun) -> list[float]:
    """The same spec trained in this process by one worker that never changes size."""
    stage = _spec(run.workdir)["stages"][1]
    config = PretrainConfig.model_validate({**stage, "num_workers": 1})
    shards = split_shards(run.workdir / "ingest", "train")
    loader = build_loader(
        "torch",
        shards,
        config.recipes(),
        LoaderConfig(batch_size=GLOBAL_BATCH, seed=config.seed, num_threads=0, with_index=True),
    )
    method = build_training_method(config, NUM_TRAIN, 1, torch.device("cpu"))
    optimizer = build_training_optimizer(config, method)
    scheduler = build_scheduler(config, optimizer, len(loader))
    losses = []
    for _ in range(EPOCHS):
        for views, labels, indices in loader:
            progress = StepProgress.at(len(losses), STEPS_PER_EPOCH, STEPS)
            batch = Batch(labels, indices)
            output = train_step(
                method, method, views, batch, optimizer, scheduler, config, progress
            )
            losses.append(output.losses["loss"].item())
    return losses


@pytest.mark.slow
def test_loss_curve_matches_an_unresized_run(run: ElasticRun) -> None:
    """Every step trains the same global batch with the same views (the torch loader seeds
    each sample's augmentations by (seed, epoch, sample)) from the same state (checkpoints
    restore it exactly), so the curves differ only by the order of fp32 sums over ranks
    (gradient all-reduce, global batch norm, the loss's gather): a few ulp (~1e-7 relative)
    at first, grown by training (batches of 6 make batch norm and the covariance sensitive):
    measured 4e-7 at step 2, 2e-4 at most over the 24 steps. A step on another batch moves
    the loss by about the curve's typical step-to-step change (median measured 3e-2, asserted
    above 1e-2 below). 1e-3 lies 5× above the one and 30× below the other."""
    history = (run.workdir / "pretrain" / "history.jsonl").read_text().splitlines()
    elastic = [json.loads(line)["loss"] for line in history]
    reference = _reference_losses(run)
    assert len(elastic) == len(reference) == STEPS
    deviation = max(abs(a - b) / abs(b) for a, b in zip(elastic, reference, strict=True))
    changes = [abs(a - b) / abs(b) for a, b in zip(reference[1:], reference, strict=False)]
    change = statistics.median(changes)
    print(f"loss deviation {deviation:.2e}, median step-to-step change {change:.2e}")
    assert deviation < LOSS_RTOL < change / 10
