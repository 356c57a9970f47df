"""Frozen-backbone features on disk: Ray tasks extract them into float16 ``.npy`` files.

A split's features live in one N×D float16 file per backbone, ``<split>.<backbone>.npy``, and
its labels in ``<split>.labels.npy`` (int64), all created at full size by the driver. Each
extraction task reads a contiguous share of every split's shards once for all backbones and
writes its samples' rows with positioned writes (``os.pwrite``, never through a shared
mapping, so tasks on different nodes can fill one file on a network filesystem; the
directory must be one every node sees). A sample's row is its split index (``KEY.index``,
written at ingest) plus the offset of its ingested split, so the files do not depend on the
number of tasks or on the order in which a loader yields samples. The probes then read the
files memory-mapped (``FeatureFile``), a chunk at a time.

On a GPU a task runs the backbones in bf16 autocast on ``channels_last`` batches and copies
each batch's float16 features to pinned host memory asynchronously: batch i is written to
disk while the GPU computes batch i+1.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from sslpipe.datasets.recipes import ViewRecipe, get_recipe
from sslpipe.datasets.shards import count_samples

from ..errors import UserError
from ..stages.base import WORKER_COMPUTE_THREADS

LABELS = "labels"
FEATURE_DTYPE = np.float16
T = TypeVar("T")


class ExtractionInputError(ValueError):
    """Input that extraction cannot use: shards whose sample indices do not match their
    index files, or a backbone whose features are not finite."""


def feature_path(directory: Path, split: str, name: str) -> Path:
    """``<split>.<name>.npy``: a backbone's features, or the labels with ``name=LABELS``."""
    return Path(directory) / f"{split}.{name}.npy"


class FeatureFile:
    """A ``.npy`` array read memory-mapped: ``file[a:b]`` and ``file[index_tensor]`` copy
    those rows into a CPU tensor (an index is read in sorted order, for locality)."""

    def __init__(self, path: Path) -> None:
        self.array = np.load(path, mmap_mode="r")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, slice):
            return torch.from_numpy(np.array(self.array[key]))
        index = key.numpy()
        order = np.argsort(index)
        rows = np.empty((len(index), *self.shape[1:]), dtype=self.array.dtype)
        rows[order] = self.array[index[order]]
        return torch.from_numpy(rows)


def create_file(path: Path, shape: tuple[int, ...], dtype: Any) -> None:
    """A ``.npy`` file of ``shape`` (sparse until its rows are written)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    del array


class RowWriter:
    """Writes rows of an existing ``.npy`` file in place with ``os.pwrite``."""

    def __init__(self, path: Path) -> None:
        array = np.load(path, mmap_mode="r")
        self.dtype = array.dtype
        self.offset = array.offset
        self.row_bytes = self.dtype.itemsize * math.prod(array.shape[1:])
        del array
        self.path = path
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        """``file[rows] = values``, one write per run of consecutive rows."""
        order = np.argsort(rows, kind="stable")
        rows, values = rows[order], np.ascontiguousarray(values[order], dtype=self.dtype)
        cuts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]
        for start, stop in itertools.pairwise(cuts):
            data = values[start:stop].tobytes()
            position = self.offset + int(rows[start]) * self.row_bytes
            if os.pwrite(self.fd, data, position) != len(data):
                raise OSError(f"short write to {self.path}: is the disk full?")

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True)
class ShardRun:
    """Consecutive shards of one ingested split and the feature-file rows they fill: the
    sample with split index i goes to row ``i + offset``."""

    shards: tuple[Path, ...]
    rows: range
    offset: int


def shares(items: Sequence[T], num_workers: int) -> list[list[T]]:
    """``items`` cut into ``num_workers`` contiguous runs of near-equal length (some empty
    when there are fewer items than workers); concatenated they are ``items`` again."""
    size, extra = divmod(len(items), num_workers)
    bounds = [i * size + min(i, extra) for i in range(num_workers + 1)]
    return [list(items[a:b]) for a, b in itertools.pairwise(bounds)]


def cut_split(
    parts: Sequence[Sequence[Path]], num_workers: int
) -> tuple[int, list[list[ShardRun]]]:
    """A split made of whole ingested splits (``parts``, each its shards in manifest order,
    rows following the parts in order): its number of rows, and per worker its runs, each
    ingested split cut into ``num_workers`` contiguous shares of near-equal shard count."""
    runs: list[list[ShardRun]] = [[] for _ in range(num_workers)]
    offset = 0
    for shards in parts:
        counted = [(Path(shard), count_samples([shard])) for shard in shards]
        start = offset
        for worker, share in enumerate(shares(counted, num_workers)):
            stop = start + sum(count for _, count in share)
            if share:
                runs[worker].append(
                    ShardRun(tuple(p for p, _ in share), range(start, stop), offset)
                )
            start = stop
        offset = start
    return offset, runs


@dataclass(frozen=True)
class ExtractSettings:
    """How a task reads and runs the backbones (the probe stage's fields of the same names;
    ``num_threads`` is its ``dali_threads``)."""

    batch_size: int
    num_threads: int
    use_gpu: bool
    loader: str
    precision: str
    prefetch: int | None = None  # None: the loader's defaults (``LoaderConfig``)
    memory_map: bool | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cuda") if self.use_gpu else torch.device("cpu")


def open_loader(shards: Sequence[Path], recipe: ViewRecipe, settings: ExtractSettings) -> Any:
    """Every sample of ``shards`` once, in batches of ``(views, labels, indices)``."""
    from sslpipe.datasets.loaders import LoaderConfig, build_loader

    config = LoaderConfig(
        batch_size=settings.batch_size,
        shuffle=False,
        drop_last=False,
        num_threads=settings.num_threads,
        prefetch=settings.prefetch,
        memory_map=settings.memory_map,
        device="gpu" if settings.use_gpu else "cpu",
        with_index=True,
    )
    return build_loader(settings.loader, shards, [recipe], config)


def prepare(backbones: dict[str, nn.Module], device: torch.device) -> dict[str, nn.Module]:
    """The backbones in eval mode on ``device`` (``channels_last`` on a GPU, with cuDNN's
    autotuner: every batch but the last has the same shape)."""
    memory_format = torch.contiguous_format
    if device.type == "cuda":
        memory_format = torch.channels_last
        torch.backends.cudnn.benchmark = True
    return {
        name: backbone.to(device, memory_format=memory_format).eval()
        for name, backbone in backbones.items()
    }


Batch = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]


@torch.no_grad()
def extract(
    models: dict[str, nn.Module], loader: Iterable, device: torch.device, precision: str
) -> Iterator[Batch]:
    """``(indices, labels, {backbone: float16 features})`` of every batch of ``loader``, on
    the host. On a GPU the features go to pinned memory asynchronously and each batch is
    yielded once the next one is queued, so the caller's writes overlap the GPU's work."""
    cuda = device.type == "cuda"
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cuda and precision == "bf16"
        else nullcontext()
    )
    pending: list[tuple[Any, np.ndarray, np.ndarray, dict[str, torch.Tensor]]] = []
    for (images, *_), labels, indices in loader:
        # Copies: a loader may reuse its output buffers for the next batch.
        indices, labels = indices.cpu().numpy().copy(), labels.cpu().numpy().copy()
        if cuda:
            images = images.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last
            )
        with autocast:
            outputs = {name: model(images) for name, model in models.items()}
        host = {name: _to_host(out, cuda) for name, out in outputs.items()}
        ready = torch.cuda.Event() if cuda else None
        if ready is not None:
            ready.record()
        pending.append((ready, indices, labels, host))
        if len(pending) > int(cuda):
            yield _finish(pending.pop(0))
    while pending:
        yield _finish(pending.pop(0))


def _to_host(features: torch.Tensor, cuda: bool) -> torch.Tensor:
    half = features.to(torch.float16)
    if not cuda:
        return half
    host = torch.empty(half.shape, dtype=half.dtype, pin_memory=True)
    return host.copy_(half, non_blocking=True)


def _finish(item: tuple[Any, np.ndarray, np.ndarray, dict[str, torch.Tensor]]) -> Batch:
    ready, indices, labels, host = item
    if ready is not None:
        ready.synchronize()
    return indices, labels, {name: features.numpy() for name, features in host.items()}


def write_run(run: ShardRun, batches: Iterable[Batch], writers: dict[str, RowWriter]) -> int:
    """Writes a run's batches into their rows and checks that every row of ``run.rows`` was
    written exactly once; returns the number of samples."""
    seen = np.zeros(len(run.rows), dtype=bool)
    for indices, labels, features in batches:
        rows = indices + run.offset
        local = rows - run.rows.start
        if ((local < 0) | (local >= len(seen))).any() or seen[local].any():
            raise ExtractionInputError(
                f"{run.shards[0].parent}: sample indices do not match the shards' index files "
                "(were the shards changed after ingest?); re-run the ingest stage"
            )
        seen[local] = True
        for name, values in features.items():
            if not np.isfinite(values).all():
                raise ExtractionInputError(
                    f"backbone {name!r} gives non-finite features (NaN weights, or values "
                    "beyond float16's ±65504)"
                )
            writers[name].write(rows, values)
        writers[LABELS].write(rows, labels)
    if not seen.all():
        raise ExtractionInputError(
            f"{run.shards[0].parent}: {int((~seen).sum())} samples of the index files were not "
            "read; re-run the ingest stage"
        )
    return len(seen)


def extract_share(
    backbones: dict[str, nn.Module],
    runs: dict[str, list[ShardRun]],
    recipe: ViewRecipe,
    settings: ExtractSettings,
    directory: Path,
) -> dict[str, Any]:
    """One task's part: the features of its runs of every split, written into the files of
    ``directory``; returns ``{"node", "images"}``."""
    torch.set_num_threads(WORKER_COMPUTE_THREADS)
    models = prepare(backbones, settings.device)
    images = 0
    for split, split_runs in runs.items():
        with ExitStack() as stack:
            writers = {}
            for name in (*models, LABELS):
                writers[name] = RowWriter(feature_path(directory, split, name))
                stack.callback(writers[name].close)
            for run in split_runs:
                loader = open_loader(run.shards, recipe, settings)
                batches = extract(models, loader, settings.device, settings.precision)
                images += write_run(run, batches, writers)
    import ray  # imported where tasks are made or run: ``measure_extraction`` needs no Ray

    return {"node": ray.get_runtime_context().get_node_id(), "images": images}


def task_resources(stage: str, cpus: int, use_gpu: bool) -> dict[str, Any]:
    """Ray resources of one probe task: ``cpus`` and a GPU with ``use_gpu``. Fails at once,
    in one line, when no node of the cluster could run such a task (Ray would queue it
    forever): ``use_gpu`` without a GPU, or no node with ``cpus`` CPUs."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if use_gpu and not any(node.get("GPU", 0) >= 1 for node in nodes):
        raise UserError(
            f"stage {stage!r}: use_gpu: true but the Ray cluster has no GPU; set "
            "use_gpu: false, or join a cluster with GPUs (RAY_ADDRESS)"
        )
    if not any(
        node.get("CPU", 0) >= cpus and (node.get("GPU", 0) >= 1 or not use_gpu) for node in nodes
    ):
        largest = max(node.get("CPU", 0) for node in nodes)
        raise UserError(
            f"stage {stage!r}: each probe task reserves {cpus} CPUs (dali_threads + 1) but no "
            f"node of the Ray cluster has that many (the largest has {largest:g}); lower "
            "dali_threads"
        )
    return {"num_cpus": cpus, "num_gpus": int(use_gpu)}


def extract_features(
    backbones: dict[str, nn.Module],
    splits: dict[str, list[list[Path]]],
    recipe: ViewRecipe,
    settings: ExtractSettings,
    *,
    num_workers: int,
    directory: Path,
    resources: dict[str, Any],
) -> list[dict[str, Any]]:
    """Per split (its ingested splits' shards, see ``cut_split``) a labels file and each
    backbone's features in ``directory``, filled by up to ``num_workers`` Ray tasks spread
    over the nodes; returns each task's report (``extract_share``)."""
    dims = {name: backbone.feature_dim for name, backbone in backbones.items()}
    runs: list[dict[str, list[ShardRun]]] = [{} for _ in range(num_workers)]
    for split, parts in splits.items():
        num_rows, split_runs = cut_split(parts, num_workers)
        create_file(feature_path(directory, split, LABELS), (num_rows,), np.int64)
        for name, dim in dims.items():
            create_file(feature_path(directory, split, name), (num_rows, dim), FEATURE_DTYPE)
        for worker, worker_runs in enumerate(split_runs):
            if worker_runs:
                runs[worker][split] = worker_runs
    import ray

    task = ray.remote(extract_share).options(**resources, scheduling_strategy="SPREAD")
    models = ray.put(backbones)
    try:
        return ray.get(
            [task.remote(models, share, recipe, settings, directory) for share in runs if share]
        )
    except ExtractionInputError as error:  # Ray's wrapper: keep only the task's message
        raise ExtractionInputError(str(error.cause)) from None


def images_per_second(batch_sizes: Iterable[int], seconds: float, warmup_batches: int) -> float:
    """Images/s of a stream of batches, timed from the end of its first ``warmup_batches``
    batches until ``seconds`` have passed."""
    images, start = 0, time.perf_counter()
    for count, size in enumerate(batch_sizes):
        if count < warmup_batches:
            start = time.perf_counter()
            continue
        images += size
        if time.perf_counter() - start >= seconds:
            break
    return images / (time.perf_counter() - start)


def measure_extraction(
    shards: Sequence[Path],
    backbone: nn.Module,
    *,
    recipe: ViewRecipe | None = None,
    batch_size: int = 256,
    num_threads: int = 4,
    use_gpu: bool | None = None,
    loader: str = "dali",
    precision: str = "bf16",
    seconds: float = 20.0,
    warmup_batches: int = 3,
) -> float:
    """Probe extraction images/s of ``backbone`` on ``shards`` in this process, as a task
    runs it (loader → backbone → float16 features written to a file): epochs over ``shards``
    for ``seconds`` after ``warmup_batches`` batches. ``recipe`` defaults to the ``eval``
    view (224 px); ``use_gpu`` defaults to whether CUDA is available."""
    settings = ExtractSettings(
        batch_size=batch_size,
        num_threads=num_threads,
        use_gpu=torch.cuda.is_available() if use_gpu is None else use_gpu,
        loader=loader,
        precision=precision,
    )
    models = prepare({"backbone": backbone}, settings.device)
    data = open_loader(shards, recipe or get_recipe("eval")[0], settings)
    num_rows = count_samples(shards)
    with tempfile.TemporaryDirectory() as directory:
        path = feature_path(Path(directory), "bench", "backbone")
        create_file(path, (num_rows, backbone.feature_dim), FEATURE_DTYPE)
        writer = RowWriter(path)

        def written() -> Iterator[int]:
            done = 0
            while True:
                for _, _, features in extract(models, data, settings.device, precision):
                    rows = np.arange(done, done + len(features["backbone"])) % num_rows
                    writer.write(rows, features["backbone"])
                    done += len(rows)
                    yield len(rows)

        try:
            return images_per_second(written(), seconds, warmup_batches)
        finally:
            writer.close()
