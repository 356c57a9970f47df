"""The ``dali`` backend: one DALI graph for GPU and CPU, built from view recipes.

Reader: ``fn.readers.webdataset`` over the shards and their ``.idx`` files; each rank reads a
contiguous ``1/num_shards`` of the samples. With ``shuffle`` the shards are put in a new order
every epoch, the same on every rank (``shuffle_after_epoch``, seeded by the run's seed: the
ranks' slices stay disjoint and change from epoch to epoch), and a ``shuffle_buffer``-sample
buffer shuffles within each rank's stream with the rank's own seed.

Decoding: ``decode="once"`` decodes each image once and cuts every view from it
(``fn.random_resized_crop``), as NVIDIA's ResNet-50 example and solo-learn do;
``"per_view"`` decodes only each view's crop region (``fn.decoders.image_random_crop``).
On a machine with a GPU the decode is ``mixed`` (nvJPEG, with the hardware decoder share and
buffer hints of ``LoaderConfig``) and every later op runs on the GPU because its input lives
there; without one the same graph runs on the CPU. Random ops take no per-op seed: they draw
from the pipeline seed (``loaders.rank_seed``), so two views of one image differ and two ranks
differ.

Colour jitter follows torchvision's ``ColorJitter`` factors in a fixed order (brightness,
contrast, saturation, hue; torchvision draws a random order per image): ``fn.color_twist``
centres contrast on mid-grey (128), so a per-image shift b·(1 − c)·(m − 128), with m the
image's mean grey level, moves the centre to the mean as torchvision does. Grayscale is
saturation 0 in the same op.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .loaders import DECODE_DEFAULT, LoaderConfig, rank_seed, use_gpu
from .recipes import ViewRecipe
from .shards import IMAGE_EXTS, INDEX_EXT, LABEL_EXT, LEGACY_EXTS, index_path

READER_NAME = "reader"
BACKEND = "dali"
_INTERPOLATION = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _coin(p: float, dtype: types.DALIDataType = types.BOOL):
    return fn.random.coin_flip(probability=p, dtype=dtype)


def _uniform(low: float, high: float):
    """A per-sample uniform draw, or ``low`` itself for an empty range."""
    return fn.random.uniform(range=[low, high]) if high > low else low


def _factor(strength: float):
    """torchvision's jitter factor: uniform in [max(0, 1 − x), 1 + x]."""
    return _uniform(max(0.0, 1 - strength), 1 + strength)


def _grey_mean(images):
    """Per image, the mean of 0.299 R + 0.587 G + 0.114 B (same device as ``images``)."""
    channels = fn.reductions.mean(images, axes=[0, 1])
    return channels[0] * _GREY[0] + channels[1] * _GREY[1] + channels[2] * _GREY[2]


def _colour(images, recipe: ViewRecipe, on_gpu: bool):
    """Colour jitter (with probability ``jitter_p``) then grayscale (``grayscale_p``).

    ``fn.color_twist`` makes b·c·T(x) + b·(1 − c)·128 (T: hue rotation and saturation
    scaling about the grey axis, saturation 0 = grayscale); adding b·(1 − c)·(m − 128) gives
    torchvision's brightness-then-contrast-about-the-mean, b·(m + c·(x − m)), before T."""
    jitter = recipe.jitter_p >= 1 or (recipe.jitter_p > 0 and _coin(recipe.jitter_p))
    grey = _coin(recipe.grayscale_p) if recipe.grayscale_p > 0 else None
    if jitter:
        brightness, contrast = _factor(recipe.brightness), _factor(recipe.contrast)
        saturation = _factor(recipe.saturation)
        if grey is not None:
            saturation = saturation * (1.0 - fn.cast(grey, dtype=types.FLOAT))
        shift = brightness * (1.0 - contrast)
        mean = _grey_mean(images)
        twisted = fn.color_twist(
            images,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            hue=_uniform(-recipe.hue * 360.0, recipe.hue * 360.0),  # DALI hue is in degrees
            dtype=types.FLOAT,
        )
        if on_gpu:
            shift = shift.gpu()
        images = fn.cast(twisted + shift * (mean - 128.0), dtype=types.UINT8)
    elif grey is not None and grey:
        images = fn.hsv(images, saturation=0.0)
    return images


def _augment(images, recipe: ViewRecipe, on_gpu: bool):
    """Colour jitter and grayscale, blur and solarization, each with its probability."""
    images = _colour(images, recipe, on_gpu)
    if recipe.blur_p >= 1 or (recipe.blur_p > 0 and _coin(recipe.blur_p)):
        # No window_size: DALI sizes each sample's window from its σ (2·⌈3σ⌉+1), exact to
        # 3σ and 2-3× faster on the CPU than BYOL's fixed 10%-of-the-side window.
        images = fn.gaussian_blur(images, sigma=_uniform(*recipe.blur_sigma))
    if recipe.solarize_p > 0 and _coin(recipe.solarize_p):
        flipped = images >= 128
        images = fn.cast(images + flipped * (255 - 2 * images), dtype=types.UINT8)
    return images


class _Decoder:
    """Decoding on the pipeline's device, with NVIDIA's nvJPEG hints on the GPU."""

    def __init__(self, config: LoaderConfig, on_gpu: bool) -> None:
        self.device = "mixed" if on_gpu else "cpu"
        self.hints: dict[str, Any] = {}
        if on_gpu:
            self.hints = {
                "hw_decoder_load": config.hw_decoder_load,
                "device_memory_padding": config.device_memory_padding,
                "host_memory_padding": config.host_memory_padding,
                "preallocate_width_hint": config.preallocate_width_hint,
                "preallocate_height_hint": config.preallocate_height_hint,
            }

    def full(self, encoded):
        return fn.decoders.image(encoded, device=self.device, output_type=types.RGB, **self.hints)

    def random_crop(self, encoded, recipe: ViewRecipe):
        assert recipe.crop_scale is not None
        return fn.decoders.image_random_crop(
            encoded,
            device=self.device,
            output_type=types.RGB,
            random_area=list(recipe.crop_scale),
            random_aspect_ratio=list(recipe.crop_ratio),
            num_attempts=10,
            **self.hints,
        )


def _crop(encoded, decoded, recipe: ViewRecipe, decoder: _Decoder):
    """The view's ``size``×``size`` uint8 HWC image: random resized crop, or resize + centre
    crop; cut from ``decoded`` (the whole image, decode once) or, when it is None, from its
    own decode of the crop region."""
    interpolation = _INTERPOLATION[recipe.interpolation]
    if recipe.crop_scale is None:
        images = decoder.full(encoded) if decoded is None else decoded
        shorter = round(recipe.size / recipe.center_crop_fraction)
        images = fn.resize(
            images, resize_shorter=shorter, interp_type=interpolation, antialias=True
        )
        return fn.crop(images, crop=(recipe.size, recipe.size))
    if decoded is None:
        return fn.resize(
            decoder.random_crop(encoded, recipe),
            size=(recipe.size, recipe.size),
            interp_type=interpolation,
            antialias=True,
        )
    return fn.random_resized_crop(
        decoded,
        size=(recipe.size, recipe.size),
        random_area=list(recipe.crop_scale),
        random_aspect_ratio=list(recipe.crop_ratio),
        num_attempts=10,
        interp_type=interpolation,
        antialias=True,
    )


def _finish(images, recipe: ViewRecipe, on_gpu: bool):
    """Colour augmentations, random flip, then float CHW normalised by the recipe's stats."""
    images = _augment(images, recipe, on_gpu)
    mirror = _coin(recipe.flip_p, types.INT32) if recipe.flip_p > 0 else 0
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in recipe.mean],
        std=[255.0 * s for s in recipe.std],
        mirror=mirror,
    )


def _jigsaw(images, recipe: ViewRecipe, on_gpu: bool):
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
        patches.append(_finish(patch, recipe, on_gpu))
    return fn.stack(*patches), order


def _extensions(ext: str) -> str:
    """A member extension and the name shards had for it before (DALI: ';' = either)."""
    return f"{ext};{LEGACY_EXTS[ext]}"


def _reader(shards: Sequence[str], config: LoaderConfig):
    """``(encoded, labels)``, and the samples' split indices when ``config.with_index``."""
    index = [_extensions(INDEX_EXT)] if config.with_index else []
    return fn.readers.webdataset(
        paths=list(shards),
        index_paths=[str(index_path(Path(s))) for s in shards],
        ext=[";".join(IMAGE_EXTS), _extensions(LABEL_EXT), *index],
        dtypes=[types.UINT8, types.INT32, *([types.INT64] if config.with_index else [])],
        missing_component_behavior="error",
        shard_id=config.shard_id,
        num_shards=config.num_shards,
        random_shuffle=config.shuffle,
        initial_fill=config.shuffle_buffer,
        shuffle_after_epoch=config.shuffle,
        **({"shuffle_after_epoch_seed": config.seed} if config.shuffle else {}),
        dont_use_mmap=not config.memory_map,
        pad_last_batch=True,
        name=READER_NAME,
    )


@pipeline_def(enable_conditionals=True)
def _views_pipeline(
    shards: Sequence[str],
    recipes: Sequence[ViewRecipe],
    config: LoaderConfig,
    on_gpu: bool,
    decode_once: bool,
):
    encoded, *annotations = _reader(shards, config)
    decoder = _Decoder(config, on_gpu)
    decoded = decoder.full(encoded) if decode_once else None
    outputs = []
    for recipe in recipes:
        images = _crop(encoded, decoded, recipe, decoder)
        if recipe.jigsaw is None:
            outputs.append(_finish(images, recipe, on_gpu))
        else:
            outputs += _jigsaw(images, recipe, on_gpu)
    return (*outputs, *annotations)


@pipeline_def
def decode_pipeline(shards: Sequence[str], config: LoaderConfig, on_gpu: bool):
    """Read + decode only, full size: the floor a view pipeline is measured against."""
    encoded, labels = _reader(shards, config)
    return _Decoder(config, on_gpu).full(encoded), labels


def decode_once(config: LoaderConfig, on_gpu: bool) -> bool:
    """Whether the graph decodes each image once (``config.decode``, or the device default)."""
    mode = config.decode
    if mode == "auto":
        mode = DECODE_DEFAULT["gpu" if on_gpu else "cpu"]
    return mode == "once"


class DaliViewLoader:
    """One rank's DALI loader (``loaders.ViewLoader``); each ``iter()`` is one epoch.

    With ``drop_last`` every rank yields the same number of full batches (DALI pads each
    rank's slice to the same length, the iterator drops the remainder); without it the last
    batch is partial and every sample of the slice is seen exactly once.

    ``state_dict()`` captures the reader position and every random generator (DALI's
    ``enable_checkpointing``); a loader built with ``checkpoint=state`` continues mid-epoch
    with the same samples and the same augmentations as the original would have produced.
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
        on_gpu = use_gpu(config)
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
        self._names = [
            name
            for i, recipe in enumerate(self.recipes)
            for name in ([f"view{i}", f"order{i}"] if recipe.jigsaw else [f"view{i}"])
        ]
        self.pipeline = _views_pipeline(
            shards=self.shards,
            recipes=self.recipes,
            config=config,
            on_gpu=on_gpu,
            decode_once=decode_once(config, on_gpu),
            batch_size=config.batch_size,
            num_threads=max(config.num_threads, 1),
            device_id=None if self.device is None else self.device.index,
            seed=rank_seed(config),
            prefetch_queue_depth=config.prefetch,
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
        """Where this loader is: resume with ``build_loader(..., checkpoint=state)``."""
        return {"backend": BACKEND, "dali": self._iterator.checkpoints()}

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
