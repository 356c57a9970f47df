"""Loader throughput: source images per second (each producing all of its views).

One implementation behind ``sslpipe bench-loader`` and ``benchmarks/bench_loader.py``.
``time_batches`` times any endless stream of batch sizes the same way: the first
``warmup_batches`` batches (start-up, shuffle-buffer fill, and the batches the loader queued
meanwhile) are not counted, then batches are counted for ``seconds``. ``decode_only`` measures
the floor: read + full-size decode, no views.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .loaders import LOADER_BACKENDS, LoaderConfig, build_loader, use_gpu, with_defaults
from .recipes import ViewRecipe

# More than any loader here queues ahead (2 DataLoader workers × prefetch 2, or DALI's
# prefetch queue, plus the batches in flight), so counting starts with every queue drained.
WARMUP_BATCHES = 8


def cpu_seconds() -> float:
    """CPU time used so far by this process (all threads) and its children (DataLoader
    workers): live ones from ``/proc``, finished ones from ``getrusage``. On a shared machine
    it measures a loader's cost where its wall-clock rate measures the contention too."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + children.ru_utime + children.ru_stime
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == me:  # after the name: state, ppid, …, utime (11), stime (12)
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def time_batches(
    batches: Iterable[int], *, seconds: float, warmup_batches: int = WARMUP_BATCHES
) -> dict[str, Any]:
    """``images_per_s`` over ``seconds`` of ``batches`` (sizes), after ``warmup_batches``;
    also the CPU milliseconds per image over the same span, the start-up time to the first
    batch and the 1-minute load average at the end."""
    iterator: Iterator[int] = iter(batches)
    start = time.perf_counter()
    next(iterator)
    first_batch_s = time.perf_counter() - start
    for _ in range(warmup_batches - 1):
        next(iterator)
    images, start, cpu = 0, time.perf_counter(), cpu_seconds()
    while (elapsed := time.perf_counter() - start) < seconds:
        images += next(iterator)
    return {
        "images": images,
        "seconds": round(elapsed, 3),
        "images_per_s": round(images / elapsed, 1),
        "cpu_ms_per_image": round(1000 * (cpu_seconds() - cpu) / images, 2),
        "first_batch_s": round(first_batch_s, 2),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def _epochs(loader: Iterable) -> Iterator[int]:
    while True:
        for _, labels, *_ in loader:
            yield len(labels)


def _dali_decode_batches(shards: Sequence[Path], config: LoaderConfig) -> Iterator[int]:
    from .dali_views import decode_pipeline

    config, on_gpu = with_defaults(config, shards), use_gpu(config)
    pipe = decode_pipeline(
        shards=[str(s) for s in shards],
        config=config,
        on_gpu=on_gpu,
        batch_size=config.batch_size,
        num_threads=config.num_threads,
        device_id=0 if on_gpu else None,
        prefetch_queue_depth=config.prefetch,
    )
    pipe.build()
    while True:
        try:
            images, _ = pipe.run()
        except StopIteration:  # the end of an epoch
            pipe.reset()
            continue
        yield len(images)


def _torch_decode_batches(shards: Sequence[Path], config: LoaderConfig) -> Iterator[int]:
    """The torch backend with no views: read + PIL decode (``convert("RGB")``) only."""
    return _epochs(build_loader("torch", shards, [], config))


def batches(
    shards: Sequence[Path],
    recipes: Sequence[ViewRecipe],
    config: LoaderConfig,
    *,
    backend: str = "dali",
    decode_only: bool = False,
) -> Iterator[int]:
    """The endless stream of batch sizes of one of our loaders, epoch after epoch."""
    if backend not in LOADER_BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(LOADER_BACKENDS)}")
    if decode_only:
        return (_dali_decode_batches if backend == "dali" else _torch_decode_batches)(
            shards, config
        )
    return _epochs(build_loader(backend, shards, recipes, config))


def describe(
    config: LoaderConfig, *, backend: str, views: int | None, decode_only: bool = False
) -> dict[str, Any]:
    """The settings a result row reports."""
    on_gpu = backend == "dali" and use_gpu(config)
    settings = dataclasses.asdict(with_defaults(config, []))
    return {
        "backend": backend,
        "device": "gpu" if on_gpu else "cpu",
        "mode": "decode_only" if decode_only else "views",
        "views": None if decode_only else views,
        **{key: settings[key] for key in ("batch_size", "num_threads", "prefetch", "decode")},
        **({"hw_decoder_load": config.hw_decoder_load} if on_gpu else {}),
    }


def measure(
    shards: Sequence[Path],
    recipes: Sequence[ViewRecipe],
    config: LoaderConfig,
    *,
    backend: str = "dali",
    seconds: float = 10.0,
    decode_only: bool = False,
    warmup_batches: int = WARMUP_BATCHES,
) -> dict[str, Any]:
    """Run one of our loaders for ``seconds`` after warm-up and report its rate."""
    stream = batches(shards, recipes, config, backend=backend, decode_only=decode_only)
    return {
        **describe(config, backend=backend, views=len(recipes), decode_only=decode_only),
        **time_batches(stream, seconds=seconds, warmup_batches=warmup_batches),
    }
