"""View presets on both backends: shapes, dtypes, value ranges, honoured probabilities, the
same batch structure, and identical batches after a mid-epoch checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.loaders import LoaderConfig, build_loader
from sslpipe.datasets.recipes import PRESETS, ViewRecipe, apply_overrides, get_recipe
from sslpipe.datasets.sources import SyntheticShapesSource

NO_RANDOM_COLOUR = {"jitter_p": 0, "grayscale_p": 0, "blur_p": 0, "solarize_p": 0, "flip_p": 0}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("views")
    ingest(SyntheticShapesSource(256, image_size=48), out, shard_size=128, val_fraction=0)
    return split_shards(out, "train")


def _expected_shapes(recipes: list[ViewRecipe], n: int) -> list[tuple[int, ...]]:
    shapes = []
    for r in recipes:
        if r.jigsaw:
            shapes += [(n, r.jigsaw.grid**2, 3, r.jigsaw.patch, r.jigsaw.patch),
                       (n, r.jigsaw.grid**2)]  # fmt: skip
        else:
            shapes.append((n, 3, r.size, r.size))
    return shapes


def _check_batch(views: list[torch.Tensor], labels: torch.Tensor, recipes, n: int) -> None:
    assert [tuple(v.shape) for v in views] == _expected_shapes(recipes, n)
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= set(range(10))
    for view in views:
        if view.dtype == torch.int64:  # jigsaw order: a permutation per sample
            assert (view.sort(dim=1).values == torch.arange(view.shape[1])).all()
        else:
            assert view.dtype == torch.float32 and torch.isfinite(view).all()
            assert -3.0 < float(view.min()) and float(view.max()) < 3.0  # noqa: SIM300


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_shapes_dtypes_and_ranges_on_both_backends(preset: str, shards: list[Path]) -> None:
    recipes = get_recipe(preset)
    for backend, threads in (("dali", 2), ("torch", 0)):
        config = LoaderConfig(batch_size=4, num_threads=threads, seed=1)
        views, labels = next(iter(build_loader(backend, shards, recipes, config)))
        _check_batch(views, labels, recipes, 4)


def test_eval_is_deterministic_and_views_of_a_pair_differ(shards: list[Path]) -> None:
    recipe = apply_overrides(get_recipe("eval"), {"size": 32})
    a, b = (
        next(iter(build_loader("dali", shards, recipe,
                               LoaderConfig(batch_size=16, shuffle=False, seed=s))))
        for s in (1, 2)
    )  # fmt: skip
    assert torch.equal(a[0][0], b[0][0])
    config = LoaderConfig(batch_size=16, shuffle=False, num_threads=1)
    views, _ = next(iter(build_loader("dali", shards, get_recipe("wmse4_cifar"), config)))
    assert all((views[0] - v).abs().mean() > 0.1 for v in views[1:])


def _unnormalise(view: torch.Tensor, recipe: ViewRecipe) -> torch.Tensor:
    mean = torch.tensor(recipe.mean)[:, None, None]
    std = torch.tensor(recipe.std)[:, None, None]
    return view * std + mean


def _epoch(shards: list[Path], recipe: ViewRecipe, backend: str = "dali") -> torch.Tensor:
    config = LoaderConfig(batch_size=64, shuffle=False, drop_last=False,
                          num_threads=2 if backend == "dali" else 0, seed=3)  # fmt: skip
    return torch.cat([views[0] for views, _ in build_loader(backend, shards, [recipe], config)])


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_grayscale_probability_is_honoured(backend: str, shards: list[Path]) -> None:
    recipe = ViewRecipe(size=24, crop_scale=None, **{**NO_RANDOM_COLOUR, "grayscale_p": 0.3})
    pixels = _unnormalise(_epoch(shards, recipe, backend), recipe)
    spread = (pixels.max(dim=1).values - pixels.min(dim=1).values).flatten(1).max(dim=1).values
    gray = (spread < 0.02).float().mean().item()
    assert abs(gray - 0.3) < 0.09, gray  # 3σ of a binomial over 256 samples


def test_flip_probability_is_honoured(shards: list[Path]) -> None:
    plain = ViewRecipe(size=24, crop_scale=None, **NO_RANDOM_COLOUR)
    flipped = _epoch(shards, plain.model_copy(update={"flip_p": 0.5}))
    reference = _epoch(shards, plain)
    same = (flipped - reference).flatten(1).abs().amax(dim=1) < 1e-5
    mirrored = (flipped - reference.flip(-1)).flatten(1).abs().amax(dim=1) < 1e-5
    assert bool((same | mirrored).all())
    assert abs(mirrored.float().mean().item() - 0.5) < 0.1


def test_backends_agree_on_the_deterministic_eval_view(shards: list[Path]) -> None:
    """Same decode, resize and normalisation: the eval views differ only by resampling."""
    recipe = ViewRecipe(size=24, crop_scale=None, center_crop_fraction=1.0, **NO_RANDOM_COLOUR)
    dali, torch_view = (_epoch(shards, recipe, backend) for backend in ("dali", "torch"))
    pixels = (_unnormalise(dali, recipe) - _unnormalise(torch_view, recipe)).abs()
    assert pixels.mean() < 0.02, pixels.mean()


CHECKPOINTED = [("dali", "vicreg_cifar"), ("dali", "pirl"), ("torch", "pirl_cifar")]


@pytest.mark.parametrize(("backend", "preset"), CHECKPOINTED)
def test_checkpoint_restores_the_same_batches_mid_epoch(
    backend: str, preset: str, shards: list[Path]
) -> None:
    recipes = get_recipe(preset)
    config = LoaderConfig(batch_size=16, num_threads=2, seed=11)
    loader = build_loader(backend, shards, recipes, config)
    batches = iter(loader)
    for _ in range(3):
        next(batches)
    state = loader.state_dict()
    expected = [next(batches) for _ in range(3)]
    got = iter(build_loader(backend, shards, recipes, config, checkpoint=state))
    for views, labels in expected:
        again, again_labels = next(got)
        assert torch.equal(labels, again_labels)
        assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
