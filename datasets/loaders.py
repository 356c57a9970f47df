"""One loader contract, two backends: ``build_loader("dali" | "torch", shards, recipes, config)``.

Every loader a backend builds (``ViewLoader``) has:

* ``device``: the ``torch.device`` its tensors are on, or ``None`` for host memory;
* ``len(loader)``: batches per epoch, the same on every rank;
* iteration: one epoch of ``(views, labels)``, or ``(views, labels, indices)`` with
  ``config.with_index``; a new epoch, in a new order, each time. The order and each step's
  samples are the group's (``EpochPlan``): step k of an epoch is the same global batch
  whatever the number of ranks, each rank taking its part; together the ranks read every
  sample of the epoch once, less what ``drop_last`` drops;
* ``state_dict()``: where it is, mid-epoch included. Its global position (``epoch``,
  ``consumed``) is the group's; the rest (DALI's random generators) is the rank's own. A loader
  built with ``checkpoint=state`` continues with the same samples and the same augmentations
  the original would have made; with only the global position (``resume_state``, after the
  group changed size) it continues with the same samples.

``labels`` are int64 (N,) (−1 = unlabelled); ``views`` holds, per recipe in order, a float32
N×3×S×S tensor normalised by the recipe's mean/std, except that a jigsaw recipe (PIRL)
contributes two entries, the patches N×G²×3×P×P and their order N×G² (int64; ``order[n, j]`` =
the grid cell, row-major, that patch j was cut from). ``indices`` (int64, N) are the samples'
positions in their split (``shards.INDEX_EXT``), stable across epochs, ranks and shuffles.

This module imports neither DALI nor torch: a backend is imported when it is built, so the
``torch`` backend works where DALI is not installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from .recipes import ViewRecipe

Device = Literal["auto", "cpu", "gpu"]
Decode = Literal["auto", "once", "per_view"]


@dataclass(frozen=True)
class LoaderConfig:
    """What one rank's loader does. ``seed`` is the run's seed, the SAME on every rank: the
    epoch order is drawn from it (so the ranks split each epoch without overlap) and the
    augmentations from it (per sample: torch; per rank: DALI, ``rank_seed``). ``batch_size``
    is this rank's share of the global batch ``batch_size × num_shards``."""

    batch_size: int
    shard_id: int = 0  # this rank
    num_shards: int = 1  # world size
    seed: int = 0
    num_threads: int = 2  # DALI CPU threads / torch DataLoader worker processes
    # Batches made ahead: DALI prefetch_queue_depth / per torch worker; None: PREFETCH_DEFAULT.
    prefetch: int | None = None
    shuffle: bool = True  # a new global order every epoch
    drop_last: bool = True  # equal full batches on every rank; else a last partial batch
    device: Device = "auto"  # where views are made: GPU (DALI mixed decode) when available
    with_index: bool = False  # also yield each sample's split index
    # Memory-mapped shard reads; False: plain reads. None: off on a network filesystem
    # (NFS, Lustre, FUSE, … : ``filesystems.on_network_filesystem`` of the first shard).
    memory_map: bool | None = None
    # DALI only: "once" decodes each image once and cuts every view from it; "per_view" decodes
    # each view's crop region on its own (ROI decode). "auto": DECODE_DEFAULT for the device.
    decode: Decode = "auto"
    # DALI mixed (nvJPEG) decoding only: share of JPEGs for the hardware decoder (A100/H100),
    # nvJPEG buffer paddings and the HW decoder's preallocation, as NVIDIA's ResNet-50 loaders
    # (DeepLearningExamples PyTorch/Classification/ConvNets/image_classification/dataloaders.py
    # paddings, MxNet/Classification/RN50v1.5/dali.py preallocation; solo-learn
    # solo/data/dali_dataloader.py uses the same paddings). hw_decoder_load: DALI's default.
    hw_decoder_load: float = 0.65
    device_memory_padding: int = 211_025_920
    host_memory_padding: int = 140_544_512
    preallocate_width_hint: int = 5_980
    preallocate_height_hint: int = 6_430

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_shards < 1 or not 0 <= self.shard_id < self.num_shards:
            raise ValueError(
                f"batch_size {self.batch_size}, shard {self.shard_id} of {self.num_shards}: "
                "need batch_size ≥ 1 and 0 ≤ shard_id < num_shards"
            )
        prefetch_ok = self.prefetch is None or self.prefetch >= 1
        if self.num_threads < 0 or not prefetch_ok or not 0 <= self.hw_decoder_load <= 1:
            raise ValueError("need num_threads ≥ 0, prefetch ≥ 1, 0 ≤ hw_decoder_load ≤ 1")


# decode="auto", per device, from the measurements in benchmarks/RESULTS_datasets.md.
DECODE_DEFAULT = {"cpu": "once", "gpu": "once"}
# prefetch=None, per device: on the GPU one batch more than DALI's default 2, so that a slow
# decode (nvJPEG's hardware/CUDA split, odd image sizes) does not stall a step (the GPU check
# sweeps --prefetch 2,3); on the CPU 2: the graph's threads are busy either way (issue 20's
# bench-loader runs, benchmarks/RESULTS_datasets.md), a deeper queue only holds more batches.
PREFETCH_DEFAULT = {"cpu": 2, "gpu": 3}


def rank_seed(config: LoaderConfig, start: int = 0) -> int:
    """The seed of this rank's augmentations: distinct per (seed, shard_id), within int32;
    ``start`` (samples of the run consumed before this loader began) makes a loader that
    starts mid-run draw anew rather than repeat the run's first augmentations."""
    return (config.seed * 1_000_003 + config.shard_id + 7_919 * start) % (2**31 - 1)


POSITION = ("backend", "epoch", "consumed")  # the state_dict keys every rank shares


@dataclass(frozen=True)
class EpochPlan:
    """Which samples each step of an epoch trains on, whatever the number of ranks.

    Epoch e's order is a permutation of all samples drawn from ``(seed, e)`` (the identity
    without ``shuffle``); step k is the global batch ``order[k·B : (k+1)·B]`` with B =
    ``batch_size × num_shards``, and rank r takes the r-th of ``num_shards`` contiguous equal
    parts of it. A position in an epoch is one number for the whole group, ``consumed`` (the
    samples of the epoch's order already trained on, k·B after k steps), so a group of another
    size with the same B continues with the same global batches: each sample once per epoch,
    in the epoch order of a run that never changed size. Without ``drop_last`` the last step
    takes the N mod B left over (split as evenly as it goes; a rank's part may be empty).
    """

    num_samples: int
    config: LoaderConfig

    @property
    def global_batch(self) -> int:
        return self.config.batch_size * self.config.num_shards

    def steps(self) -> int:
        """Global batches per epoch."""
        whole, rest = divmod(self.num_samples, self.global_batch)
        return whole + int(bool(rest) and not self.config.drop_last)

    def rank_steps(self) -> int:
        """The steps of an epoch in which this rank has samples (``len(loader)``)."""
        steps = self.steps()
        return steps - int(steps > 0 and len(self.rank_samples(0, steps - 1)) == 0)

    def order(self, epoch: int) -> np.ndarray:
        if not self.config.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.config.seed, epoch]).permutation(self.num_samples)

    def rank_samples(self, epoch: int, step: int, order: np.ndarray | None = None) -> np.ndarray:
        """This rank's samples (positions in the split) at ``step`` of ``epoch``."""
        order = self.order(epoch) if order is None else order
        start = step * self.global_batch
        size = min(self.global_batch, self.num_samples - start)
        rank, ranks = self.config.shard_id, self.config.num_shards
        return order[start + size * rank // ranks : start + size * (rank + 1) // ranks]

    def start_step(self, consumed: int) -> int:
        """The step a position continues from; it must be a whole number of global batches."""
        step, rest = divmod(consumed, self.global_batch)
        if rest:
            raise ValueError(
                f"position {consumed}: not a whole number of global batches of {self.global_batch}"
            )
        return step


def resume_state(
    states: Sequence[dict[str, Any]] | None, rank: int, world: int
) -> dict[str, Any] | None:
    """The state rank ``rank`` of a ``world``-rank group resumes from, given every rank's saved
    state (None: start afresh; a synthetic-data loader saves none): its own when the group
    kept its size (the same augmentations too), else only the group's global position (the
    same samples)."""
    if not states:
        return None
    if len(states) == world:
        return states[rank] or None
    return {key: states[0][key] for key in POSITION if key in states[0]} or None


def use_gpu(config: LoaderConfig) -> bool:
    """Whether views are made on the GPU: asked for, or ``auto`` and a CUDA GPU is present."""
    import torch

    if config.device == "gpu" and not torch.cuda.is_available():
        raise ValueError("device 'gpu' requested but no CUDA GPU is available")
    return config.device == "gpu" or (config.device == "auto" and torch.cuda.is_available())


def with_defaults(config: LoaderConfig, shards: Sequence[Path | str]) -> LoaderConfig:
    """``config`` with its ``None`` settings resolved where the loader runs: ``prefetch`` by
    device (``PREFETCH_DEFAULT``), ``memory_map`` off when the shards are on a network
    filesystem."""
    from .filesystems import on_network_filesystem

    prefetch = config.prefetch
    if prefetch is None:
        prefetch = PREFETCH_DEFAULT["gpu" if use_gpu(config) else "cpu"]
    memory_map = config.memory_map
    if memory_map is None:
        memory_map = not (shards and on_network_filesystem(shards[0]))
    return replace(config, prefetch=prefetch, memory_map=memory_map)


class ViewLoader(Protocol):
    """What ``build_loader`` returns (see the module docstring)."""

    device: Any

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...

    def state_dict(self) -> dict[str, Any]: ...


# Backend name → "module:class", imported when built.
BACKENDS: dict[str, str] = {
    "dali": "sslpipe.datasets.dali_views:DaliViewLoader",
    "torch": "sslpipe.datasets.torch_views:TorchViewLoader",
}
LOADER_BACKENDS = tuple(BACKENDS)
_INSTALL_HINT = {"dali": "pip install nvidia-dali-cuda130, or use the torch loader"}


def build_loader(
    backend: str,
    shards: Sequence[Path | str],
    recipes: Sequence[ViewRecipe],
    config: LoaderConfig,
    *,
    checkpoint: dict[str, Any] | None = None,
) -> ViewLoader:
    """One rank's loader over ``shards`` (``checkpoint``: a ``state_dict()`` to resume from).

    Raises ``ValueError`` for an unknown backend, a checkpoint of another backend or a GPU
    that is not there, and ``ImportError`` (one line, with the fix) when the backend's library
    is not installed."""
    if backend not in BACKENDS:
        raise ValueError(f"loader {backend!r}: choose one of {', '.join(LOADER_BACKENDS)}")
    if checkpoint is not None and checkpoint.get("backend") != backend:
        raise ValueError(
            f"the checkpoint is from the {checkpoint.get('backend')!r} loader, not {backend!r}"
        )
    module_name, class_name = BACKENDS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = _INSTALL_HINT.get(backend, "install it")
        raise ImportError(f"the {backend} loader needs {error.name} ({hint})") from None
    config = with_defaults(config, shards)
    loader: ViewLoader = getattr(module, class_name)(
        [Path(s) for s in shards], list(recipes), config, checkpoint=checkpoint
    )
    return loader
