"""The ``torch`` backend: the same view recipes with webdataset + torchvision v2 + DataLoader.

For machines where DALI cannot be installed (macOS, Windows) and as the benchmark baseline,
so it is built the way strong PyTorch pipelines are: PIL decode, torchvision v2 transforms on
PIL images, PIL's ``ImageFilter.GaussianBlur`` (as solo-learn, much faster than torchvision's
tensor blur), one DataLoader worker process per core. It yields the batch structure of
``dali_views.ViewLoader``. Ranks take every ``num_shards``-th shard, so with uneven shards
ranks may differ by a batch; use the DALI loader for multi-rank training.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from .dali_views import LoaderConfig
from .recipes import ViewRecipe
from .shards import IMAGE_EXTS, LABEL_EXT, decode_label


class _PILBlur:
    """Gaussian blur with σ drawn uniformly from ``sigma`` (solo-learn's implementation)."""

    def __init__(self, sigma: tuple[float, float]) -> None:
        self.sigma = sigma

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def _colour_ops(recipe: ViewRecipe) -> list[Any]:
    ops: list[Any] = []
    if recipe.jitter_p > 0:
        jitter = v2.ColorJitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
        ops.append(v2.RandomApply([jitter], p=recipe.jitter_p))
    if recipe.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(recipe.grayscale_p))
    if recipe.blur_p > 0:
        ops.append(v2.RandomApply([_PILBlur(recipe.blur_sigma)], p=recipe.blur_p))
    if recipe.solarize_p > 0:
        ops.append(v2.RandomSolarize(128, p=recipe.solarize_p))
    if recipe.flip_p > 0:
        ops.append(v2.RandomHorizontalFlip(recipe.flip_p))
    return [
        *ops,
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(recipe.mean), list(recipe.std)),
    ]


def _crop_op(recipe: ViewRecipe) -> Any:
    if recipe.crop_scale is None:
        shorter = round(recipe.size / recipe.center_crop_fraction)
        return v2.Compose([v2.Resize(shorter, antialias=True), v2.CenterCrop(recipe.size)])
    return v2.RandomResizedCrop(
        recipe.size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, antialias=True
    )


class _ViewMaker:
    """PIL image → the view tensors of one recipe (``[image]`` or ``[patches, order]``)."""

    def __init__(self, recipe: ViewRecipe) -> None:
        self.recipe = recipe
        self.crop = _crop_op(recipe)
        self.finish = v2.Compose(_colour_ops(recipe))

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        image = self.crop(image)
        spec = self.recipe.jigsaw
        if spec is None:
            return [self.finish(image)]
        cells = spec.grid**2
        order = torch.randperm(cells)
        patches = []
        for cell in order.tolist():
            row, col = divmod(cell, spec.grid)
            x = col * spec.cell + random.randint(0, spec.cell - spec.patch)
            y = row * spec.cell + random.randint(0, spec.cell - spec.patch)
            patch = image.crop((x, y, x + spec.patch, y + spec.patch))
            patches.append(self.finish(patch))
        return [torch.stack(patches), order]


class _Sample:
    """Picklable webdataset map: raw sample → (views, label)."""

    def __init__(self, recipes: Sequence[ViewRecipe]) -> None:
        self.makers = [_ViewMaker(recipe) for recipe in recipes]

    def __call__(self, sample: dict[str, Any]) -> tuple[list[torch.Tensor], int]:
        data = next(sample[ext] for ext in IMAGE_EXTS if ext in sample)
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
        views = [view for maker in self.makers for view in maker(image)]
        return views, decode_label(sample[LABEL_EXT])


def _collate(batch: list[tuple[list[torch.Tensor], int]]) -> tuple[list[torch.Tensor], Any]:
    views = [torch.stack(column) for column in zip(*(views for views, _ in batch), strict=True)]
    return views, torch.tensor([label for _, label in batch], dtype=torch.int64)


class TorchViewLoader:
    """``ViewLoader``'s contract on webdataset + torchvision; ``num_threads`` = worker processes."""

    def __init__(
        self, shards: Sequence[Path], recipes: Sequence[ViewRecipe], config: LoaderConfig
    ) -> None:
        urls = [str(s) for s in shards][config.shard_id :: config.num_shards]
        dataset = wds.WebDataset(
            urls,
            shardshuffle=len(urls) if config.shuffle else False,
            nodesplitter=None,
            workersplitter=wds.split_by_worker,
            empty_check=False,
            seed=config.seed,
        )
        if config.shuffle:
            dataset = dataset.shuffle(1000, seed=config.seed)
        dataset = dataset.map(_Sample(recipes))
        workers = min(config.num_threads, len(urls))
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            num_workers=workers,
            collate_fn=_collate,
            drop_last=config.drop_last,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        return iter(self.loader)
