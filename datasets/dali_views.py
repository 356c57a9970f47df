"""The ``dali`` backend: one DALI graph for GPU and CPU, built from view recipes.

Input: an ``external_source`` that reads, at each step, this rank's part of the group's
global batch (``loaders.EpochPlan``: one permutation of all samples per epoch, drawn from the
run's seed) straight from the shards at the offsets their ``.idx`` files record
(``sample_table``). The order is the group's, not the rank's, so a group that changes size
continues the epoch with the samples not yet seen; DALI's own readers shard and shuffle per
rank (``shard_id``/``num_shards``, shuffle buffers), which cannot be re-split mid-epoch.

Decoding: ``decode="once"`` decodes each image once and cuts every view from it
(``fn.random_resized_crop``), as NVIDIA's ResNet-50 example and solo-learn do;
``"per_view"`` decodes only each view's crop region (``fn.decoders.image_random_crop``).
On a machine with a GPU the decode is ``mixed`` (nvJPEG, with the hardware decoder share and
buffer hints of ``LoaderConfig``) and every later op runs on the GPU because its input lives
there; without one the same graph runs on the CPU. Random ops take no per-op seed: they draw
from the pipeline seed (``loaders.rank_seed``), so two views of one image differ and two ranks
differ.

Colour jitter follows torchvision's ``ColorJitter`` factors in a fixed order (brightness,
contrast, saturation, hue; torchvision draws a random order per image) in one uint8
``fn.color_twist`` pass per view, as solo-learn's DALI pipeline (``RandomColorJitter``,
``solo/data/dali_dataloader.py:93`` at 9187ea3); unlike solo-learn, contrast is centred on the
image's mean grey level as torchvision's is (``_colour``). Grayscale is saturation 0 in the same
op.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .loaders import DECODE_DEFAULT, EpochPlan, LoaderConfig, rank_seed, use_gpu
from .recipes import ViewRecipe
from .sample_table import SampleReader, SampleTable
from .shards import INDEX_EXT

BACKEND = "dali"
_INTERPOLATION = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
# Solarization (levels ≥ 128 inverted, as torchvision's solarize at threshold 128) as a table.
_LEVELS = list(range(256))
_SOLARIZED = [level if level < 128 else 255 - level for level in _LEVELS]


def _coin(p: float, dtype: types.DALIDataType = types.BOOL):
    return fn.random.coin_flip(probability=p, dtype=dtype)


def _uniform(low: float, high: float):
    """A per-sample uniform draw, or ``low`` itself for an empty range."""
    return fn.random.uniform(range=[low, high]) if high > low else low


def _factor(strength: float):
    """torchvision's jitter factor: uniform in [max(0, 1 − x), 1 + x]."""
    return _uniform(max(0.0, 1 - strength), 1 + strength)


def _grey_mean(images, on_gpu: bool):
    """Per image, the mean of 0.299 R + 0.587 G + 0.114 B, on the host: the three channel means
    leave the GPU (``.cpu()``, DALI's dynamic executor) because DALI reads op arguments there."""
    channels = fn.reductions.mean(images, axes=[0, 1])
    if on_gpu:
        channels = channels.cpu()
    return channels[0] * _GREY[0] + channels[1] * _GREY[1] + channels[2] * _GREY[2]


def _colour(images, recipe: ViewRecipe, on_gpu: bool):
    """Colour jitter (with probability ``jitter_p``) then grayscale (``grayscale_p``), uint8 in
    and out, one pass over the pixels besides the mean.

    torchvision's brightness b, contrast c about the mean grey m, then saturation and hue T
    (which keep grey) make b·c·T(x) + b·(1 − c)·m (clamped once at the end here, after each
    step in torchvision). ``fn.color_twist(b', c')`` makes b'·c'·T(x) + b'·(1 − c')·128
    (DALI ``dali/operators/image/color/color_twist.h``, ``DetermineTransformation``), so
    b' = b·g and c' = c / g with g = c + (1 − c)·m/128 give exactly that. g > 0 for every
    contrast strength below 1 (c < 2, m < 256); above, g ≤ 0 only for bright images and the
    twist takes the negative factors as they are (g = 0 exactly has probability 0)."""
    jitter = recipe.jitter_p >= 1 or (recipe.jitter_p > 0 and _coin(recipe.jitter_p))
    grey = _coin(recipe.grayscale_p) if recipe.grayscale_p > 0 else None
    if jitter:
        brightness, contrast = _factor(recipe.brightness), _factor(recipe.contrast)
        saturation = _factor(recipe.saturation)
        if grey is not None:
            saturation = saturation * (1.0 - fn.cast(grey, dtype=types.FLOAT))
        gain = contrast + (1.0 - contrast) * _grey_mean(images, on_gpu) / 128.0
        images = fn.color_twist(
            images,
            brightness=brightness * gain,
            contrast=contrast / gain,
            saturation=saturation,
            hue=_uniform(-recipe.hue * 360.0, recipe.hue * 360.0),  # DALI hue is in degrees
        )
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
        images = fn.lookup_table(images, keys=_LEVELS, values=_SOLARIZED, dtype=types.UINT8)
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
        if _crop_in_normalize(recipe):
            return images
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


def _crop_in_normalize(recipe: ViewRecipe) -> bool:
    """Whether the view's centre crop is left to ``crop_mirror_normalize`` (a resized view with
    no pixel op between resize and normalisation: the eval views), saving a copy of each image
    (DeepLearningExamples ``PyTorch/Classification/ConvNets/image_classification/
    dataloaders.py`` ``HybridValPipe`` and solo-learn ``solo/data/dali_dataloader.py:276`` crop
    there too)."""
    pixel_ops = (recipe.jitter_p, recipe.grayscale_p, recipe.blur_p, recipe.solarize_p)
    return recipe.crop_scale is None and recipe.jigsaw is None and not any(pixel_ops)


def _finish(images, recipe: ViewRecipe, on_gpu: bool):
    """Colour augmentations, random flip, then float CHW normalised by the recipe's stats."""
    images = _augment(images, recipe, on_gpu)
    mirror = _coin(recipe.flip_p, types.INT32) if recipe.flip_p > 0 else 0
    crop = {"crop": (recipe.size, recipe.size)} if _crop_in_normalize(recipe) else {}
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in recipe.mean],
        std=[255.0 * s for s in recipe.std],
        mirror=mirror,
        **crop,
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


class _PlanSource:
    """The graph's input, an ``external_source`` callback: for DALI's ``BatchInfo`` (epoch and
    iteration of this pipeline) this rank's part of that step of ``loaders.EpochPlan`` — the
    encoded images, labels (int32) and, with ``with_index``, split indices (int64) — and
    ``StopIteration`` at the epoch's end. The pipeline's first epoch is ``start_epoch`` from
    step ``start_step``; DALI's checkpoints restore its epoch and iteration counters."""

    def __init__(
        self, shards: Sequence[str], config: LoaderConfig, start_epoch: int, start_step: int
    ) -> None:
        table = SampleTable.read([Path(s) for s in shards])
        if config.with_index and (table.index[:, 0] < 0).any():
            raise ValueError(f"with_index: a sample in {shards[0]} … has no {INDEX_EXT} member")
        self.plan = EpochPlan(len(table), config)
        self.reader = SampleReader(table, config.memory_map)
        self.start_epoch, self.start_step = start_epoch, start_step
        self.with_index = config.with_index
        self._order: tuple[int, np.ndarray] | None = None
        # The step's samples are spread over the shards: random reads, overlapped (a network
        # filesystem answers each in ~ms).
        self._pool = ThreadPoolExecutor(max(config.num_threads, 1), "sslpipe-samples")

    @property
    def dtypes(self) -> list[types.DALIDataType]:
        return [types.UINT8, types.INT32, *([types.INT64] if self.with_index else [])]

    def __call__(self, info: types.BatchInfo) -> tuple[list[np.ndarray], ...]:
        epoch = self.start_epoch + info.epoch_idx
        step = info.iteration + (self.start_step if info.epoch_idx == 0 else 0)
        if step >= self.plan.rank_steps():
            raise StopIteration
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self.plan.order(epoch))
        samples = self.plan.rank_samples(epoch, step, self._order[1])
        read = list(self._pool.map(self.reader.read, samples.tolist()))
        images = [np.frombuffer(encoded, dtype=np.uint8) for encoded, _, _ in read]
        labels = [np.array([label], dtype=np.int32) for _, label, _ in read]
        if not self.with_index:
            return images, labels
        return images, labels, [np.array([index], dtype=np.int64) for _, _, index in read]


def _reader(source: _PlanSource):
    """``(encoded, labels)``, and the samples' split indices with ``with_index``."""
    return fn.external_source(
        source=source,
        num_outputs=len(source.dtypes),
        batch=True,
        batch_info=True,
        dtype=source.dtypes,
    )


def _annotations(annotations: Sequence[Any], on_gpu: bool) -> list[Any]:
    """Labels (as int64) and split indices, moved to the GPU inside the pipeline with a GPU,
    so that the iterator copies them device to device instead of from pageable host memory
    each step (solo-learn ``solo/data/dali_dataloader.py:318-320``: ``labels.gpu()``, int64)."""
    labels, *indices = annotations
    on_host = [fn.cast(labels, dtype=types.INT64), *indices]
    return [node.gpu() for node in on_host] if on_gpu else on_host


@pipeline_def(enable_conditionals=True)
def _views_pipeline(
    source: _PlanSource,
    recipes: Sequence[ViewRecipe],
    config: LoaderConfig,
    on_gpu: bool,
    decode_once: bool,
):
    encoded, *annotations = _reader(source)
    decoder = _Decoder(config, on_gpu)
    decoded = decoder.full(encoded) if decode_once else None
    outputs = []
    for recipe in recipes:
        images = _crop(encoded, decoded, recipe, decoder)
        if recipe.jigsaw is None:
            outputs.append(_finish(images, recipe, on_gpu))
        else:
            outputs += _jigsaw(images, recipe, on_gpu)
    return (*outputs, *_annotations(annotations, on_gpu))


@pipeline_def
def decode_pipeline(shards: Sequence[str], config: LoaderConfig, on_gpu: bool):
    """Read + decode only, full size: the floor a view pipeline is measured against (one
    epoch: ``run()`` raises ``StopIteration`` at its end, ``reset()`` starts the next)."""
    encoded, labels = _reader(_PlanSource(shards, config, 0, 0))
    return _Decoder(config, on_gpu).full(encoded), labels


def decode_once(config: LoaderConfig, on_gpu: bool) -> bool:
    """Whether the graph decodes each image once (``config.decode``, or the device default)."""
    mode = config.decode
    if mode == "auto":
        mode = DECODE_DEFAULT["gpu" if on_gpu else "cpu"]
    return mode == "once"


class DaliViewLoader:
    """One rank's DALI loader (``loaders.ViewLoader``); each ``iter()`` is (the rest of) one
    epoch, its steps those of ``loaders.EpochPlan``.

    ``state_dict()`` has the group's position and this rank's random generators (DALI's
    ``enable_checkpointing``, with the epoch and step its pipeline started at): a loader built
    with ``checkpoint=state`` continues mid-epoch with the same samples and the same
    augmentations as the original would have produced. From the position alone (a group of
    another size) it continues with the same samples and new augmentations, seeded by the
    position.
    """

    def __init__(
        self,
        shards: Sequence[Path],
        recipes: Sequence[ViewRecipe],
        config: LoaderConfig,
        *,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        self.recipes = list(recipes)
        self.config = config
        on_gpu = use_gpu(config)
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
        self._names = [
            name
            for i, recipe in enumerate(self.recipes)
            for name in ([f"view{i}", f"order{i}"] if recipe.jigsaw else [f"view{i}"])
        ]
        state = checkpoint or {}
        self.epoch, self.consumed = state.get("epoch", 0), state.get("consumed", 0)
        self.source = _PlanSource([str(s) for s in shards], config, self.epoch, 0)
        plan = self.source.plan
        self.source.start_step = plan.start_step(self.consumed)
        if "dali" in state:  # this rank's own state: its pipeline's start and generators
            self.source.start_epoch, self.source.start_step = state["start"]
        self.pipeline = _views_pipeline(
            source=self.source,
            recipes=self.recipes,
            config=config,
            on_gpu=on_gpu,
            decode_once=decode_once(config, on_gpu),
            batch_size=config.batch_size,
            num_threads=max(config.num_threads, 1),
            device_id=None if self.device is None else self.device.index,
            seed=rank_seed(config, self.epoch * plan.num_samples + self.consumed),
            prefetch_queue_depth=config.prefetch,
            exec_dynamic=True,  # DALI 2's default; _grey_mean's GPU → host copy needs it
            # Always on: its cost is below what bench-loader can tell apart (CPU time per
            # image the same within 1 % with it off, benchmarks/RESULTS_datasets.md).
            enable_checkpointing=True,
            checkpoint=state["dali"][0] if "dali" in state else None,
        )
        self._iterator = DALIGenericIterator(
            self.pipeline,
            [*self._names, "label", *(["index"] if config.with_index else [])],
            last_batch_policy=LastBatchPolicy.PARTIAL,  # the source makes only planned batches
            auto_reset=True,
        )

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: resume with ``build_loader(..., checkpoint=state)``."""
        return {
            "backend": BACKEND,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "start": [self.source.start_epoch, self.source.start_step],
            "dali": self._iterator.checkpoints(),
        }

    def __len__(self) -> int:
        return self.source.plan.rank_steps()

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for batch in self._iterator:
            self.consumed += self.source.plan.global_batch
            outputs = batch[0]
            views = [
                outputs[name].long() if name.startswith("order") else outputs[name]
                for name in self._names
            ]
            labels = outputs["label"].reshape(-1)
            if self.config.with_index:
                yield views, labels, outputs["index"].reshape(-1)
            else:
                yield views, labels
        self.epoch, self.consumed = self.epoch + 1, 0
