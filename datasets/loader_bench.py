"""Loader throughput: source images per second (each producing all of its views).

One implementation behind ``sslpipe bench-loader`` and ``benchmarks/bench_loader.py``.
``decode_only`` measures the floor: read + full-size decode, no views.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .dali_views import LoaderConfig, ViewLoader, decode_pipeline, gpu_available
from .recipes import get_recipe

BACKENDS = ("dali", "torch")


def _dali_decode_batches(shards: Sequence[Path], config: LoaderConfig) -> Iterable[int]:
    use_gpu = config.device == "gpu" or (config.device == "auto" and gpu_available())
    pipe = decode_pipeline(
        shards=[str(s) for s in shards],
        decode_device="mixed" if use_gpu else "cpu",
        batch_size=config.batch_size,
        num_threads=config.num_threads,
        device_id=0 if use_gpu else None,
    )
    pipe.build()
    while True:
        images, _ = pipe.run()
        yield len(images)


def _torch_decode_batches(shards: Sequence[Path], config: LoaderConfig) -> Iterable[int]:
    import torch
    import webdataset as wds

    dataset = wds.WebDataset(
        [str(s) for s in shards], shardshuffle=False, empty_check=False
    ).decode("pilrgb")
    loader = torch.utils.data.DataLoader(
        dataset.repeat(),
        batch_size=config.batch_size,
        num_workers=min(config.num_threads, len(shards)),
        collate_fn=len,
    )
    yield from loader


def _view_batches(loader: Iterable) -> Iterable[int]:
    while True:
        for _, labels in loader:
            yield len(labels)


def measure(
    shards: Sequence[Path],
    *,
    backend: str = "dali",
    recipe: str = "vicreg",
    batch_size: int = 64,
    seconds: float = 10.0,
    threads: int = 2,
    device: str = "auto",
    decode_only: bool = False,
    size: int | None = None,
) -> dict[str, Any]:
    """Run one loader for ``seconds`` (after 2 warm-up batches) and report its rate."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {BACKENDS}")
    if device == "gpu" and not gpu_available():
        raise ValueError("device 'gpu' requested but no CUDA GPU is available")
    config = LoaderConfig(batch_size=batch_size, num_threads=threads, device=device)
    recipes = get_recipe(recipe)
    if size is not None:
        recipes = [r.model_copy(update={"size": size}) for r in recipes]
    if decode_only:
        batches = (_dali_decode_batches if backend == "dali" else _torch_decode_batches)(
            shards, config
        )
    elif backend == "dali":
        batches = _view_batches(ViewLoader(shards, recipes, config))
    else:
        from .torch_views import TorchViewLoader

        batches = _view_batches(TorchViewLoader(shards, recipes, config))
    iterator = iter(batches)
    for _ in range(2):
        next(iterator)
    images, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        images += next(iterator)
    on_gpu = backend == "dali" and (device == "gpu" or (device == "auto" and gpu_available()))
    return {
        "backend": backend,
        "device": "gpu" if on_gpu else "cpu",
        "mode": "decode_only" if decode_only else "views",
        "recipe": None if decode_only else recipe,
        "views": None if decode_only else len(recipes),
        "batch_size": batch_size,
        "threads": threads,
        "images": images,
        "seconds": round(elapsed, 3),
        "images_per_s": round(images / elapsed, 1),
    }
