"""Probe feature extraction on Ray tasks (real Ray, real DALI): one worker or two, the same
features in the same order, hence the same probe metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.recipes import apply_overrides, get_recipe
from sslpipe.datasets.sources import SyntheticShapesSource
from sslpipe.pipelines.stages.probe import ProbeConfig, evaluate, extract_splits, shares
from sslpipe.ssl_ops import build_backbone

pytestmark = pytest.mark.slow


def test_shares_are_contiguous_and_cover_every_shard() -> None:
    shards = [Path(f"s{i}") for i in range(5)]
    assert shares(shards, 2) == [shards[:3], shards[3:]]
    assert shares(shards, 7) == [[s] for s in shards] + [[], []]


def test_one_or_two_workers_give_the_same_features_and_metrics(tmp_path: Path, ray_cleanup) -> None:
    ingest(SyntheticShapesSource(120, image_size=32), tmp_path, shard_size=15, val_fraction=0.25)
    splits = {"train": split_shards(tmp_path, "train"), "test": split_shards(tmp_path, "val")}
    assert len(splits["train"]) == 6 and len(splits["test"]) == 2
    recipe = apply_overrides(get_recipe("eval_cifar"), {})[0]
    backbones = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        backbones.append(build_backbone("small_cnn").eval())
    config = ProbeConfig(
        name="probe", type="probe", model="m", data="d", epochs=20, knn_k=[5], batch_size=16,
        dali_threads=1,
    )  # fmt: skip

    features = {
        workers: extract_splits(
            backbones, splits, recipe, config.model_copy(update={"num_workers": workers})
        )
        for workers in (1, 2)
    }
    for name, count in (("train", 90), ("test", 30)):
        for (one, labels_one), (two, labels_two) in zip(
            features[1][name], features[2][name], strict=True
        ):
            assert one.shape == (count, backbones[0].feature_dim)
            torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)
            assert torch.equal(labels_one, labels_two)
    assert not torch.allclose(features[1]["train"][0][0], features[1]["train"][1][0])

    metrics = [evaluate(features[workers], 10, config) for workers in (1, 2)]
    for one, two in zip(*metrics, strict=True):
        assert one["linear"]["top1"] == pytest.approx(two["linear"]["top1"])
        assert one["knn"]["k5"]["confusion"] == two["knn"]["k5"]["confusion"]
