"""The ``torch`` backend: the view recipes on PIL + torchvision v2 in DataLoader workers.

For machines where DALI cannot be installed (macOS, Windows, no CUDA wheel) and as a second
implementation of the same recipes. It needs neither DALI nor webdataset:

* a map-style dataset reads each sample straight from its shard at the offsets the DALI
  ``.idx`` files record (one ``pread`` or memory-map slice per sample);
* every epoch is a permutation of all samples drawn from ``(seed, epoch)``, the same on every
  rank, each step a global batch of it that the ranks split (``loaders.EpochPlan``), so the
  ranks split each epoch without overlap and yield equal batch counts;
* each sample's augmentations draw from a generator seeded by ``(seed, epoch, sample)``, so
  they depend neither on the worker or rank that makes them nor on where the run was resumed:
  ``state_dict()`` is just the global position ``(epoch, samples consumed)``, and a group of
  another size continues with the same views.

The augmentations are torchvision v2 on PIL images, PIL's ``ImageFilter.GaussianBlur`` for the
blur (as solo-learn and VICReg), one DataLoader worker process per ``num_threads``. Colour
jitter is torchvision's ``ColorJitter`` (random order of the four factors per image).
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from .loaders import EpochPlan, LoaderConfig, use_gpu
from .recipes import ViewRecipe
from .sample_table import SampleReader, SampleTable
from .shards import INDEX_EXT

BACKEND = "torch"
_INTERPOLATION = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


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
    return [*ops, v2.PILToTensor()]  # uint8; normalised per batch (_Normalise)


def _crop_op(recipe: ViewRecipe) -> Any:
    interpolation = _INTERPOLATION[recipe.interpolation]
    if recipe.crop_scale is None:
        shorter = round(recipe.size / recipe.center_crop_fraction)
        return v2.Compose(
            [v2.Resize(shorter, interpolation=interpolation), v2.CenterCrop(recipe.size)]
        )
    return v2.RandomResizedCrop(
        recipe.size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, interpolation=interpolation
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
        order = torch.randperm(spec.grid**2)
        patches = []
        for cell in order.tolist():
            row, col = divmod(cell, spec.grid)
            x = col * spec.cell + random.randint(0, spec.cell - spec.patch)
            y = row * spec.cell + random.randint(0, spec.cell - spec.patch)
            patches.append(self.finish(image.crop((x, y, x + spec.patch, y + spec.patch))))
        return [torch.stack(patches), order]


def _mix(*values: int) -> int:
    """A well-spread 63-bit seed from integers (SplitMix64 steps), cheap enough per sample."""
    state = 0
    for value in values:
        state = (state ^ (value & 0xFFFFFFFFFFFFFFFF)) + 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        state ^= state >> 31
    return state >> 1


class _ShardSamples(torch.utils.data.Dataset):
    """``(sample, epoch)`` → ``(views, label, index)``, augmentations seeded per sample."""

    def __init__(
        self, table: SampleTable, recipes: Sequence[ViewRecipe], seed: int, memory_map: bool
    ) -> None:
        self.reader = SampleReader(table, memory_map)
        self.makers = [_ViewMaker(recipe) for recipe in recipes]
        self.seed = seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[torch.Tensor], int, int]:
        sample, epoch = key
        encoded, label, index = self.reader.read(sample)
        state = _mix(self.seed, epoch, sample)
        # The CPU generator only: torch.manual_seed also queues a CUDA seeding with its stack
        # trace on every call (~0.2 ms).
        torch.default_generator.manual_seed(state)
        random.seed(state)
        with Image.open(io.BytesIO(encoded)) as opened:
            image = opened.convert("RGB")
        views = [view for maker in self.makers for view in maker(image)]
        return views, label, index


def _collate(batch: list[tuple[list[torch.Tensor], int, int]]) -> tuple[Any, ...]:
    views = [torch.stack(column) for column in zip(*(views for views, _, _ in batch), strict=True)]
    labels = torch.tensor([label for _, label, _ in batch], dtype=torch.int64)
    return views, labels, torch.tensor([index for _, _, index in batch], dtype=torch.int64)


class _EpochBatches:
    """The batch sampler: this rank's batches of the loader's current epoch, from its current
    position on (read when a DataLoader iterator starts, so a resumed loader skips what was
    done)."""

    def __init__(self, loader: TorchViewLoader) -> None:
        self.loader = loader

    def _steps(self) -> range:
        loader = self.loader
        return range(loader.plan.start_step(loader.consumed), len(loader))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        plan, epoch = self.loader.plan, self.loader.epoch
        order = plan.order(epoch)
        for step in self._steps():
            yield [(int(s), epoch) for s in plan.rank_samples(epoch, step, order)]

    def __len__(self) -> int:
        return len(self._steps())


class _Normalise:
    """uint8 view batches → float32 ``(x/255 − mean)/std`` per recipe, on ``device``: one
    vectorised pass per batch instead of three per image in the workers, and a quarter of the
    bytes between processes (and to the GPU)."""

    def __init__(self, recipes: Sequence[ViewRecipe], device: torch.device | None) -> None:
        self.device = device
        self.stats = []  # per output: (−mean·255/scale, 1/(255·std)), or None for jigsaw orders
        for recipe in recipes:
            mean = torch.tensor(recipe.mean, device=device).view(3, 1, 1) * 255.0
            scale = 1.0 / (torch.tensor(recipe.std, device=device).view(3, 1, 1) * 255.0)
            self.stats += [(mean, scale)] + ([None] if recipe.jigsaw else [])

    def __call__(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for view, stats in zip(views, self.stats, strict=True):
            view = view.to(self.device, non_blocking=True) if self.device else view
            out.append(view if stats is None else view.float().sub_(stats[0]).mul_(stats[1]))
        return out


class TorchViewLoader:
    """One rank's torch loader (``loaders.ViewLoader``); each ``iter()`` is (the rest of) one
    epoch, its steps those of ``loaders.EpochPlan``. Without ``drop_last`` the last step's
    parts may differ by one sample (a rank's may be empty: one batch fewer); every sample is
    then seen exactly once per epoch."""

    def __init__(
        self,
        shards: Sequence[Path],
        recipes: Sequence[ViewRecipe],
        config: LoaderConfig,
        *,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.batch_size = config.batch_size
        self.table = SampleTable.read(shards)
        if config.with_index and (self.table.index[:, 0] < 0).any():
            raise ValueError(f"with_index: a sample in {shards[0]} … has no {INDEX_EXT} member")
        on_gpu = use_gpu(config)
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
        self._normalise = _Normalise(recipes, self.device)
        self.plan = EpochPlan(len(self.table), config)
        self.epoch = 0 if checkpoint is None else int(checkpoint["epoch"])
        self.consumed = 0 if checkpoint is None else int(checkpoint["consumed"])
        dataset = _ShardSamples(self.table, recipes, config.seed, config.memory_map)
        workers = config.num_threads
        self._loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=_EpochBatches(self),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=on_gpu,
            prefetch_factor=config.prefetch if workers > 0 else None,
        )

    def __len__(self) -> int:
        return self.plan.rank_steps()

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: resume with ``build_loader(..., checkpoint=state)``."""
        return {"backend": BACKEND, "epoch": self.epoch, "consumed": self.consumed}

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for views, labels, indices in self._loader:
            self.consumed += self.plan.global_batch
            views = self._normalise(views)
            yield (views, labels, indices) if self.config.with_index else (views, labels)
        self.epoch, self.consumed = self.epoch + 1, 0
