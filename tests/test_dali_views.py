"""The DALI view graph on the CPU: shapes, dtypes, independent views, reproducible seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslpipe.datasets.dali_views import LoaderConfig, ViewLoader
from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.recipes import apply_overrides, get_recipe
from sslpipe.datasets.sources import SyntheticShapesSource


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("shapes")
    ingest(SyntheticShapesSource(96, image_size=48), out, shard_size=40, val_fraction=0)
    return split_shards(out, "train")


def _first_batch(shards: list[Path], seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    recipes = apply_overrides(get_recipe("vicreg"), {"size": 32})
    loader = ViewLoader(shards, recipes, LoaderConfig(batch_size=16, seed=seed, num_threads=1))
    return next(iter(loader))


def test_two_views_shapes_dtypes_and_labels(shards: list[Path]) -> None:
    views, labels = _first_batch(shards, seed=1)
    assert len(views) == 2
    for view in views:
        assert view.shape == (16, 3, 32, 32) and view.dtype == torch.float32
        assert torch.isfinite(view).all()
        assert float(view.min()) > -3.5 and float(view.max()) < 3.5  # normalised pixels
    assert labels.shape == (16,) and labels.dtype == torch.int64
    assert set(labels.tolist()) <= set(range(10))
    assert (views[0] - views[1]).abs().mean() > 0.1, "the two views must be different draws"


def test_same_seed_same_batch_other_seed_other_batch(shards: list[Path]) -> None:
    a_views, a_labels = _first_batch(shards, seed=7)
    b_views, b_labels = _first_batch(shards, seed=7)
    c_views, _ = _first_batch(shards, seed=8)
    assert torch.equal(a_labels, b_labels)
    assert all(torch.equal(a, b) for a, b in zip(a_views, b_views, strict=True))
    assert not torch.equal(a_views[0], c_views[0])


def test_eval_view_sees_every_sample_once_without_randomness(shards: list[Path]) -> None:
    recipe = apply_overrides(get_recipe("eval"), {"size": 32})
    config = LoaderConfig(batch_size=20, shuffle=False, drop_last=False, num_threads=1)
    passes = [list(ViewLoader(shards, recipe, config)) for _ in range(2)]
    labels = torch.cat([label for _, label in passes[0]])
    assert len(labels) == 96
    assert torch.bincount(labels).tolist() == [10, 10, 10, 10, 10, 10, 9, 9, 9, 9]
    first, second = (torch.cat([v[0] for v, _ in p]) for p in passes)
    assert torch.equal(first, second)


def test_ranks_split_the_data_and_yield_equal_batch_counts(shards: list[Path]) -> None:
    recipes = apply_overrides(get_recipe("vicreg"), {"size": 32})
    counts = []
    for rank in range(2):
        config = LoaderConfig(batch_size=16, shard_id=rank, num_shards=2, seed=rank)
        loader = ViewLoader(shards, recipes, config)
        counts.append(len(list(loader)))
    assert counts == [3, 3]
