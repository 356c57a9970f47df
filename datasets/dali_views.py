"""DALI multi-view augmentation: one graph for GPU and CPU, built from view recipes.

Each view decodes the encoded image on its own (``fn.decoders.image_random_crop`` decodes only
the random-resized-crop region), so the views are independent draws. On a machine with a GPU
the decode is ``mixed`` (nvJPEG) and every later op runs on the GPU because its input lives
there; without one the same graph runs on the CPU. Random ops take no per-op seed: they draw
from the pipeline seed, so two views of one image differ and two ranks differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .recipes import ViewRecipe
from .shards import IMAGE_EXTS, LABEL_EXT, index_path

READER_NAME = "reader"


def gpu_available() -> bool:
    return torch.cuda.is_available()


def _coin(p: float, dtype: types.DALIDataType = types.BOOL):
    return fn.random.coin_flip(probability=p, dtype=dtype)


def _uniform(low: float, high: float):
    return fn.random.uniform(range=[low, high])


def _augment(images, recipe: ViewRecipe):
    """Colour jitter, grayscale, blur and solarization, each applied with its probability."""
    if recipe.jitter_p > 0 and _coin(recipe.jitter_p):
        images = fn.color_twist(
            images,
            brightness=_uniform(1 - recipe.brightness, 1 + recipe.brightness),
            contrast=_uniform(1 - recipe.contrast, 1 + recipe.contrast),
            saturation=_uniform(1 - recipe.saturation, 1 + recipe.saturation),
            hue=_uniform(-recipe.hue * 360.0, recipe.hue * 360.0),  # DALI hue is in degrees
        )
    if recipe.grayscale_p > 0 and _coin(recipe.grayscale_p):
        images = fn.hsv(images, saturation=0.0)
    if recipe.blur_p > 0 and _coin(recipe.blur_p):
        # Window as in BYOL: 10% of the output side, odd.
        window = max(3, int(0.1 * recipe.size) // 2 * 2 + 1)
        images = fn.gaussian_blur(images, window_size=window, sigma=_uniform(*recipe.blur_sigma))
    if recipe.solarize_p > 0 and _coin(recipe.solarize_p):
        flipped = images >= 128
        images = fn.cast(images + flipped * (255 - 2 * images), dtype=types.UINT8)
    return images


def _view(encoded, recipe: ViewRecipe, decode_device: str):
    if recipe.crop_scale is None:
        images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
        shorter = round(recipe.size / recipe.center_crop_fraction)
        images = fn.resize(images, resize_shorter=shorter, antialias=True)
        images = fn.crop(images, crop=(recipe.size, recipe.size))
    else:
        images = fn.decoders.image_random_crop(
            encoded,
            device=decode_device,
            output_type=types.RGB,
            random_area=list(recipe.crop_scale),
            random_aspect_ratio=list(recipe.crop_ratio),
            num_attempts=10,
        )
        images = fn.resize(images, size=(recipe.size, recipe.size), antialias=True)
    images = _augment(images, recipe)
    mirror = _coin(recipe.flip_p, types.INT32) if recipe.flip_p > 0 else 0
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in recipe.mean],
        std=[255.0 * s for s in recipe.std],
        mirror=mirror,
    )


@pipeline_def(enable_conditionals=True)
def _views_pipeline(
    shards: Sequence[str],
    recipes: Sequence[ViewRecipe],
    shard_id: int,
    num_shards: int,
    shuffle: bool,
    decode_device: str,
):
    encoded, labels = fn.readers.webdataset(
        paths=list(shards),
        index_paths=[str(index_path(Path(s))) for s in shards],
        ext=[";".join(IMAGE_EXTS), LABEL_EXT],
        dtypes=[types.UINT8, types.INT32],
        missing_component_behavior="error",
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=shuffle,
        initial_fill=1024,
        pad_last_batch=True,
        name=READER_NAME,
    )
    views = [_view(encoded, recipe, decode_device) for recipe in recipes]
    return (*views, labels)


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int
    shard_id: int = 0
    num_shards: int = 1
    seed: int = 0
    num_threads: int = 2
    shuffle: bool = True
    drop_last: bool = True
    device: str = "auto"  # "auto" | "cpu" | "gpu"


class ViewLoader:
    """One rank's DALI loader; each ``iter()`` is one epoch of ``(views, labels)`` batches.

    With ``drop_last`` every rank yields the same number of batches (DALI pads each slice to
    the same length, the iterator drops the remainder); without it the last batch is partial
    and every sample of the slice is seen exactly once.
    """

    def __init__(
        self, shards: Sequence[Path], recipes: Sequence[ViewRecipe], config: LoaderConfig
    ) -> None:
        use_gpu = config.device == "gpu" or (config.device == "auto" and gpu_available())
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else None
        self.pipeline = _views_pipeline(
            shards=[str(s) for s in shards],
            recipes=list(recipes),
            shard_id=config.shard_id,
            num_shards=config.num_shards,
            shuffle=config.shuffle,
            decode_device="mixed" if use_gpu else "cpu",
            batch_size=config.batch_size,
            num_threads=config.num_threads,
            device_id=self.device.index if self.device else None,
            seed=config.seed,
            prefetch_queue_depth=2,
        )
        self._names = [f"view{i}" for i in range(len(recipes))]
        policy = LastBatchPolicy.DROP if config.drop_last else LastBatchPolicy.PARTIAL
        self._iterator = DALIGenericIterator(
            self.pipeline,
            [*self._names, "label"],
            reader_name=READER_NAME,
            last_batch_policy=policy,
            auto_reset=True,
        )

    def __len__(self) -> int:
        return len(self._iterator)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        for batch in self._iterator:
            outputs = batch[0]
            yield [outputs[name] for name in self._names], outputs["label"].reshape(-1).long()
