"""Probe extraction on Ray tasks over a two-node cluster (real Ray, real DALI): one task or
two spread over the nodes write the same feature files, hence the same probe metrics; a GPU
probe on a cluster without GPUs fails at once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.recipes import get_recipe
from sslpipe.datasets.sources import SyntheticShapesSource
from sslpipe.pipelines.errors import UserError
from sslpipe.pipelines.probe.features import (
    LABELS,
    ExtractionInputError,
    ExtractSettings,
    extract_features,
    feature_path,
    task_resources,
)
from sslpipe.pipelines.probe.run import evaluate
from sslpipe.pipelines.stages.probe import ProbeConfig
from sslpipe.ssl_ops import build_backbone

pytestmark = pytest.mark.slow
CPUS_PER_NODE = 2


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray cluster of two nodes on this machine, the driver connected to it."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": CPUS_PER_NODE})
    cluster.add_node(num_cpus=CPUS_PER_NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[list[Path]]]:
    data = tmp_path_factory.mktemp("data")
    ingest(SyntheticShapesSource(120, image_size=32), data, shard_size=15, val_fraction=0.25)
    return {"train": [split_shards(data, "train")], "test": [split_shards(data, "val")]}


def test_one_or_two_tasks_on_two_nodes_give_the_same_features_and_metrics(
    tmp_path: Path, two_nodes, shards
) -> None:
    splits = shards
    assert len(splits["train"][0]) == 6 and len(splits["test"][0]) == 2
    backbones = {}
    for name, seed in (("trained", 0), ("random_init", 1)):
        torch.manual_seed(seed)
        backbones[name] = build_backbone("small_cnn").eval()
    config = ProbeConfig(
        name="probe", type="probe", model="m", data="d", epochs=10, knn_k=[5], batch_size=45,
        dali_threads=1,
    )  # fmt: skip
    settings = ExtractSettings(16, num_threads=1, use_gpu=False, loader="dali", precision="fp32")
    resources = task_resources("probe", config.cpus_per_worker(), use_gpu=False)
    assert resources == {"num_cpus": 2, "num_gpus": 0}

    reports, metrics = {}, {}
    for workers in (1, 2):
        directory = tmp_path / f"features{workers}"
        directory.mkdir()
        reports[workers] = extract_features(
            backbones,
            splits,
            get_recipe("eval_cifar")[0],
            settings,
            num_workers=workers,
            directory=directory,
            resources=resources,
        )
        metrics[workers] = evaluate(directory, list(backbones), 10, config, resources)
    assert [r["images"] for r in reports[1]] == [120]
    assert sorted(r["images"] for r in reports[2]) == [60, 60]
    assert len({r["node"] for r in reports[2]}) == 2  # SPREAD: one task on each node

    for split, count in (("train", 90), ("test", 30)):
        labels = [np.load(feature_path(tmp_path / f"features{w}", split, LABELS)) for w in (1, 2)]
        assert np.array_equal(*labels) and len(labels[0]) == count
        for name in backbones:
            one, two = (
                np.load(feature_path(tmp_path / f"features{w}", split, name)) for w in (1, 2)
            )
            assert one.shape == (count, 256) and one.dtype == np.float16
            np.testing.assert_allclose(one, two, rtol=2e-3, atol=1e-4)
    train = {
        name: np.load(feature_path(tmp_path / "features1", "train", name)) for name in backbones
    }
    assert not np.allclose(train["trained"], train["random_init"])

    for one, two in zip(metrics[1], metrics[2], strict=True):
        assert one["linear"]["top1"] == pytest.approx(two["linear"]["top1"])
        assert one["knn"]["k5"]["confusion"] == two["knn"]["k5"]["confusion"]


def test_non_finite_features_fail_with_one_line(tmp_path: Path, two_nodes, shards) -> None:
    backbone = build_backbone("small_cnn").eval()
    with torch.no_grad():
        backbone[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ExtractionInputError) as error:
        extract_features(
            {"broken": backbone},
            {"train": shards["train"]},
            get_recipe("eval_cifar")[0],
            ExtractSettings(16, num_threads=1, use_gpu=False, loader="dali", precision="fp32"),
            num_workers=1,
            directory=tmp_path,
            resources=task_resources("probe", cpus=2, use_gpu=False),
        )
    assert str(error.value) == (
        "backbone 'broken' gives non-finite features (NaN weights, or values beyond float16's "
        "±65504)"
    )


def test_tasks_no_node_can_run_fail_at_once(two_nodes) -> None:
    began = time.perf_counter()
    with pytest.raises(UserError, match="use_gpu: true but the Ray cluster has no GPU"):
        task_resources("probe", cpus=2, use_gpu=True)
    with pytest.raises(UserError, match=r"reserves 3 CPUs .* \(the largest has 2\); lower"):
        task_resources("probe", cpus=3, use_gpu=False)
    assert time.perf_counter() - began < 5
