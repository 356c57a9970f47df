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
from typing import Any

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .recipes import ViewRecipe
from .shards import IMAGE_EXTS, INDEX_EXT, LABEL_EXT, index_path

READER_NAME = "reader"


def gpu_available() -> bool:
    return torch.cuda.is_available()


def _coin(p: float, dtype: types.DALIDataType = types.BOOL):
    return fn.random.coin_flip(probability=p, dtype=dtype)


def _uniform(low: float, high: float):
    return fn.random.uniform(range=[low, high])


def _augment(images, recipe: ViewRecipe):
    """Colour jitter, grayscale, blur and solarization, each applied with its probability."""
    if recipe.jitter_p >= 1 or (recipe.jitter_p > 0 and _coin(recipe.jitter_p)):
        images = fn.color_twist(
            images,
            brightness=_uniform(1 - recipe.brightness, 1 + recipe.brightness),
            contrast=_uniform(1 - recipe.contrast, 1 + recipe.contrast),
            saturation=_uniform(1 - recipe.saturation, 1 + recipe.saturation),
            hue=_uniform(-recipe.hue * 360.0, recipe.hue * 360.0),  # DALI hue is in degrees
        )
    if recipe.grayscale_p > 0 and _coin(recipe.grayscale_p):
        images = fn.hsv(images, saturation=0.0)
    if recipe.blur_p >= 1 or (recipe.blur_p > 0 and _coin(recipe.blur_p)):
        # No window_size: DALI sizes each sample's window from its σ (2·⌈3σ⌉+1), exact to
        # 3σ and 2-3× faster on the CPU than BYOL's fixed 10%-of-the-side window.
        images = fn.gaussian_blur(images, sigma=_uniform(*recipe.blur_sigma))
    if recipe.solarize_p > 0 and _coin(recipe.solarize_p):
        flipped = images >= 128
        images = fn.cast(images + flipped * (255 - 2 * images), dtype=types.UINT8)
    return images


def _crop(encoded, recipe: ViewRecipe, decode_device: str):
    """Decoded ``size``×``size`` uint8 HWC image: random resized crop, or resize + centre crop."""
    if recipe.crop_scale is None:
        images = fn.decoders.image(encoded, device=decode_device, output_type=types.RGB)
        shorter = round(recipe.size / recipe.center_crop_fraction)
        images = fn.resize(images, resize_shorter=shorter, antialias=True)
        return fn.crop(images, crop=(recipe.size, recipe.size))
    images = fn.decoders.image_random_crop(
        encoded,
        device=decode_device,
        output_type=types.RGB,
        random_area=list(recipe.crop_scale),
        random_aspect_ratio=list(recipe.crop_ratio),
        num_attempts=10,
    )
    return fn.resize(images, size=(recipe.size, recipe.size), antialias=True)


def _finish(images, recipe: ViewRecipe):
    """Colour augmentations, random flip, then float CHW normalised by the recipe's stats."""
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


def _jigsaw(images, recipe: ViewRecipe):
    """``(patches G²×3×p×p, order G²)`` where patch j is cut from grid cell ``order[j]``.

    The permutation is the ranking of G² uniform keys (rank_j = #{k : key_k < key_j}), which
    DALI computes with broadcast comparisons; slot j then crops inside cell rank_j, so the
    shuffle costs nothing beyond choosing crop positions.
    """
    spec = recipe.jigsaw
    assert spec is not None
    cells = spec.grid**2
    keys = fn.random.uniform(range=[0.0, 1.0], shape=[cells])
    below = fn.cast(
        fn.reshape(keys, shape=[1, cells]) < fn.reshape(keys, shape=[cells, 1]),
        dtype=types.INT32,
    )
    order = fn.reductions.sum(below, axes=1)
    # crop_pos is the anchor as a fraction of (size − patch); the patch moves within its cell.
    travel = float(recipe.size - spec.patch)
    patches = []
    for slot in range(cells):
        cell = order[slot]
        x = (cell % spec.grid) * spec.cell + _uniform(0.0, spec.cell - spec.patch)
        y = (cell // spec.grid) * spec.cell + _uniform(0.0, spec.cell - spec.patch)
        patch = fn.crop(
            images,
            crop=(spec.patch, spec.patch),
            crop_pos_x=fn.cast(x, dtype=types.FLOAT) / travel,
            crop_pos_y=fn.cast(y, dtype=types.FLOAT) / travel,
        )
        patches.append(_finish(patch, recipe))
    return fn.stack(*patches), order


def _view(encoded, recipe: ViewRecipe, decode_device: str) -> list:
    """The outputs of one view: ``[images]``, or ``[patches, order]`` for a jigsaw view."""
    images = _crop(encoded, recipe, decode_device)
    if recipe.jigsaw is not None:
        return list(_jigsaw(images, recipe))
    return [_finish(images, recipe)]


def _reader(
    shards: Sequence[str], shard_id: int, num_shards: int, shuffle: bool, with_index: bool = False
):
    """``(encoded, labels)``, and the samples' split indices when ``with_index``."""
    return fn.readers.webdataset(
        paths=list(shards),
        index_paths=[str(index_path(Path(s))) for s in shards],
        ext=[";".join(IMAGE_EXTS), LABEL_EXT, *([INDEX_EXT] if with_index else [])],
        dtypes=[types.UINT8, types.INT32, *([types.INT64] if with_index else [])],
        missing_component_behavior="error",
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=shuffle,
        initial_fill=1024,
        pad_last_batch=True,
        name=READER_NAME,
    )


@pipeline_def(enable_conditionals=True)
def _views_pipeline(
    shards: Sequence[str],
    recipes: Sequence[ViewRecipe],
    shard_id: int,
    num_shards: int,
    shuffle: bool,
    decode_device: str,
    with_index: bool,
):
    encoded, *annotations = _reader(shards, shard_id, num_shards, shuffle, with_index)
    outputs = [out for recipe in recipes for out in _view(encoded, recipe, decode_device)]
    return (*outputs, *annotations)


@pipeline_def
def decode_pipeline(shards: Sequence[str], decode_device: str):
    """Read + decode only, full size: the floor a view pipeline is measured against."""
    encoded, labels = _reader(shards, 0, 1, shuffle=False)
    return fn.decoders.image(encoded, device=decode_device, output_type=types.RGB), labels


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
    with_index: bool = False  # also yield each sample's split index (``KEY.index``)


class ViewLoader:
    """One rank's DALI loader; each ``iter()`` is one epoch of ``(views, labels)`` batches.

    Batch structure: ``labels`` is an int64 tensor (N,) (−1 = unlabelled) and ``views`` holds,
    for each recipe in order, one float32 tensor N×3×S×S (normalised, S = the recipe's size),
    except a jigsaw recipe (PIRL), which contributes two entries: the patches N×G²×3×P×P and
    their order N×G² (int64; ``order[n, j]`` = grid cell, row-major, that patch j was cut from,
    the convention of ``ssl_ops.JigsawHead``). So ``pirl`` yields
    ``[image N×3×224×224, patches N×9×3×64×64, order N×9]``. With ``config.with_index``
    a batch is ``(views, labels, indices)``: ``indices`` (int64, N) are the samples' positions
    in their split as written at ingest (``shards.INDEX_EXT``), stable across epochs, ranks
    and shuffles.

    With ``drop_last`` every rank yields the same number of batches (DALI pads each slice to
    the same length, the iterator drops the remainder); without it the last batch is partial
    and every sample of the slice is seen exactly once. Random ops draw from the pipeline seed
    (``config.seed``; in Ray Train use base seed + world rank).

    Checkpointing: ``state_dict()`` captures the reader position and every random generator
    (DALI's ``enable_checkpointing``); a loader built with ``checkpoint=state`` (or after
    ``load_state_dict(state)``) continues mid-epoch with the same samples and the same
    augmentations as the original would have produced.
    """

    def __init__(
        self,
        shards: Sequence[Path],
        recipes: Sequence[ViewRecipe],
        config: LoaderConfig,
        *,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        self.shards = [str(s) for s in shards]
        self.recipes = list(recipes)
        self.config = config
        use_gpu = config.device == "gpu" or (config.device == "auto" and gpu_available())
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else None
        self._names = [
            name
            for i, recipe in enumerate(self.recipes)
            for name in ([f"view{i}", f"order{i}"] if recipe.jigsaw else [f"view{i}"])
        ]
        self._build(checkpoint)

    def _build(self, checkpoint: dict[str, Any] | None) -> None:
        config = self.config
        self.pipeline = _views_pipeline(
            shards=self.shards,
            recipes=self.recipes,
            shard_id=config.shard_id,
            num_shards=config.num_shards,
            shuffle=config.shuffle,
            decode_device="cpu" if self.device is None else "mixed",
            with_index=config.with_index,
            batch_size=config.batch_size,
            num_threads=config.num_threads,
            device_id=None if self.device is None else self.device.index,
            seed=config.seed,
            prefetch_queue_depth=2,
            enable_checkpointing=True,
            checkpoint=None if checkpoint is None else checkpoint["dali"][0],
        )
        policy = LastBatchPolicy.DROP if config.drop_last else LastBatchPolicy.PARTIAL
        self._iterator = DALIGenericIterator(
            self.pipeline,
            [*self._names, "label", *(["index"] if config.with_index else [])],
            reader_name=READER_NAME,
            last_batch_policy=policy,
            auto_reset=True,
        )

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: resume with ``ViewLoader(..., checkpoint=state)``."""
        return {"dali": self._iterator.checkpoints()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._build(state)

    def __len__(self) -> int:
        return len(self._iterator)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for batch in self._iterator:
            outputs = batch[0]
            views = [
                outputs[name].long() if name.startswith("order") else outputs[name]
                for name in self._names
            ]
            labels = outputs["label"].reshape(-1).long()
            if self.config.with_index:
                yield views, labels, outputs["index"].reshape(-1)
            else:
                yield views, labels
