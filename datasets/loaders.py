"""One loader contract, two backends: ``build_loader("dali" | "torch", shards, recipes, config)``.

Every loader a backend builds (``ViewLoader``) has:

* ``device``: the ``torch.device`` its tensors are on, or ``None`` for host memory;
* ``len(loader)``: batches per epoch, the same on every rank;
* iteration: one epoch of ``(views, labels)``, or ``(views, labels, indices)`` with
  ``config.with_index``; a new epoch, in a new order, each time (different on every rank;
  together the ranks read every sample of the epoch once, less what ``drop_last`` drops);
* ``state_dict()``: where it is, mid-epoch included; a loader built with ``checkpoint=state``
  continues with the same samples and the same augmentations the original would have made.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from .recipes import ViewRecipe

Device = Literal["auto", "cpu", "gpu"]
Decode = Literal["auto", "once", "per_view"]


@dataclass(frozen=True)
class LoaderConfig:
    """What one rank's loader does. ``seed`` is the run's seed, the SAME on every rank: the
    epoch order is drawn from it (so the ranks split each epoch without overlap) and each rank's
    augmentations from ``(seed, shard_id)`` (``rank_seed``)."""

    batch_size: int
    shard_id: int = 0  # this rank
    num_shards: int = 1  # world size
    seed: int = 0
    num_threads: int = 2  # DALI CPU threads / torch DataLoader worker processes
    prefetch: int = 2  # batches made ahead: DALI prefetch_queue_depth / per torch worker
    shuffle: bool = True  # a new global order every epoch
    drop_last: bool = True  # equal full batches on every rank; else a last partial batch
    device: Device = "auto"  # where views are made: GPU (DALI mixed decode) when available
    with_index: bool = False  # also yield each sample's split index
    memory_map: bool = True  # False: plain reads, for network filesystems (DALI dont_use_mmap)
    # DALI only. Shuffle buffer of the reader (samples), on top of the per-epoch shard order.
    shuffle_buffer: int = 1024
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
        if self.num_threads < 0 or self.prefetch < 1 or not 0 <= self.hw_decoder_load <= 1:
            raise ValueError("need num_threads ≥ 0, prefetch ≥ 1, 0 ≤ hw_decoder_load ≤ 1")


# decode="auto", per device, from the measurements in benchmarks/RESULTS_datasets.md.
DECODE_DEFAULT = {"cpu": "once", "gpu": "once"}


def rank_seed(config: LoaderConfig) -> int:
    """The seed of this rank's augmentations: distinct per (seed, shard_id), within int32."""
    return (config.seed * 1_000_003 + config.shard_id) % (2**31 - 1)


def use_gpu(config: LoaderConfig) -> bool:
    """Whether views are made on the GPU: asked for, or ``auto`` and a CUDA GPU is present."""
    import torch

    if config.device == "gpu" and not torch.cuda.is_available():
        raise ValueError("device 'gpu' requested but no CUDA GPU is available")
    return config.device == "gpu" or (config.device == "auto" and torch.cuda.is_available())


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
    loader: ViewLoader = getattr(module, class_name)(
        [Path(s) for s in shards], list(recipes), config, checkpoint=checkpoint
    )
    return loader
