"""The DALI view graph on the CPU: shapes, dtypes, independent views, reproducible seeds, both
decode modes, contrast about the image mean, plain reads instead of memory maps, the eval crop
inside crop_mirror_normalize, and the uint8 colour jitter against torchvision's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.loaders import LoaderConfig, build_loader
from sslpipe.datasets.recipes import ViewRecipe, apply_overrides, get_recipe
from sslpipe.datasets.sources import ImageFolderSource, SyntheticShapesSource


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("shapes")
    ingest(SyntheticShapesSource(96, image_size=48), out, shard_size=40, val_fraction=0)
    return split_shards(out, "train")


def _first_batch(
    shards: list[Path], seed: int, **config
) -> tuple[list[torch.Tensor], torch.Tensor]:
    recipes = apply_overrides(get_recipe("vicreg"), {"size": 32})
    config = LoaderConfig(batch_size=16, seed=seed, num_threads=1, **config)
    return next(iter(build_loader("dali", shards, recipes, config)))


@pytest.mark.parametrize("decode", ["once", "per_view"])
def test_two_views_shapes_dtypes_and_labels(shards: list[Path], decode: str) -> None:
    views, labels = _first_batch(shards, seed=1, decode=decode, memory_map=decode == "once")
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
    passes = [list(build_loader("dali", shards, recipe, config)) for _ in range(2)]
    labels = torch.cat([label for _, label in passes[0]])
    assert len(labels) == 96
    assert torch.bincount(labels).tolist() == [10, 10, 10, 10, 10, 10, 9, 9, 9, 9]
    first, second = (torch.cat([v[0] for v, _ in p]) for p in passes)
    assert torch.equal(first, second)


_GREY = (0.299, 0.587, 0.114)


def _grey(images: torch.Tensor) -> torch.Tensor:
    return (images * torch.tensor(_GREY)[:, None, None]).sum(1).mean((1, 2))


def test_contrast_is_centred_on_each_image_mean(shards: list[Path]) -> None:
    """torchvision's contrast keeps an image's mean grey level; DALI's own centre is mid-grey,
    which would move every image's mean by (1 − c)·(128 − mean)."""
    plain = {"size": 16, "crop_scale": None, "flip_p": 0, "grayscale_p": 0, "blur_p": 0,
             "mean": (0, 0, 0), "std": (1, 1, 1)}  # fmt: skip
    jitter = {"jitter_p": 1, "brightness": 0, "contrast": 0.9, "saturation": 0, "hue": 0}
    config = LoaderConfig(batch_size=96, shuffle=False, num_threads=1)
    reference, contrasted = (
        next(iter(build_loader("dali", shards, [ViewRecipe(**plain, **extra)], config)))[0][0]
        for extra in ({"jitter_p": 0}, jitter)
    )
    assert (contrasted - reference).abs().mean() > 0.05, "contrast was applied"
    moved = (_grey(contrasted) - _grey(reference)).abs()
    off_centre = (_grey(reference) - 0.5).abs()
    assert off_centre.mean() > 0.08  # so a mid-grey centre would show
    assert moved.mean() < 0.01, (moved.mean(), off_centre.mean())


RAW = {"size": 32, "crop_scale": None, "center_crop_fraction": 1.0, "flip_p": 0,
       "grayscale_p": 0, "blur_p": 0, "mean": (0, 0, 0), "std": (1, 1, 1)}  # fmt: skip
VICREG_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}


@pytest.fixture(scope="module")
def cifar_views(cifar_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """300 CIFAR-10 images (0–1 RGB) as they are, jittered as VICReg's views, and through the
    jitter op with every factor 1 (so resized, then cropped by ``fn.crop``, not in CMN)."""
    out = tmp_path_factory.mktemp("cifar_shards")
    ingest(ImageFolderSource(cifar_folder), out, shard_size=100, val_fraction=0)
    recipes = [
        ViewRecipe(**RAW, jitter_p=0),
        ViewRecipe(**RAW, jitter_p=1, **VICREG_JITTER),
        ViewRecipe(**RAW, jitter_p=1, brightness=0, contrast=0, saturation=0, hue=0),
    ]
    config = LoaderConfig(batch_size=300, shuffle=False, drop_last=False, num_threads=1)
    loader = build_loader("dali", split_shards(out, "train"), recipes, config)
    (plain, jittered, identity), _ = next(iter(loader))
    return {"plain": plain, "jittered": jittered, "identity": identity}


def test_eval_crop_in_normalize_cuts_the_same_pixels(cifar_views: dict) -> None:
    assert torch.equal(cifar_views["plain"], cifar_views["identity"])


def _jitter_ratios(jittered: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """Per image: grey-level mean, grey-level spread and colourfulness of the jittered view
    over the plain one (brightness; brightness × contrast; × saturation), 3 × N."""

    def grey(images: torch.Tensor) -> torch.Tensor:
        return (images * torch.tensor(_GREY)[:, None, None]).sum(1)

    def chroma(images: torch.Tensor) -> torch.Tensor:
        return (images - grey(images)[:, None]).abs().mean((1, 2, 3))

    return torch.stack([
        grey(jittered).mean((1, 2)) / grey(plain).mean((1, 2)),
        grey(jittered).std((1, 2)) / grey(plain).std((1, 2)),
        chroma(jittered) / chroma(plain),
    ])  # fmt: skip


def test_uint8_colour_jitter_matches_torchvision_in_distribution(cifar_views: dict) -> None:
    """The one-pass uint8 twist against torchvision's ``ColorJitter`` (random order, HSV hue,
    a clamp after each factor) on the same 300 images: the 10/25/50/75/90 % quantiles of the
    per-image ratios agree within 0.06 (two torchvision seeds differ by up to 0.04 here; no
    jitter, or contrast about mid-grey, misses by 0.3 or more)."""
    from torchvision.transforms import v2

    plain = cifar_views["plain"]
    torch.manual_seed(0)
    jitter = v2.ColorJitter(**VICREG_JITTER)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 300 tiny images: more threads only wait for each other
    try:
        reference = torch.stack([jitter(image) for image in (plain * 255).round().byte()]) / 255
    finally:
        torch.set_num_threads(threads)
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    ours, theirs = (
        _jitter_ratios(views, plain).quantile(quantiles, dim=1)
        for views in (cifar_views["jittered"], reference)
    )
    assert (ours - theirs).abs().max() < 0.06, (ours, theirs)
    assert (ours[-1] - ours[0]).min() > 0.4, "the factors spread the ratios"
