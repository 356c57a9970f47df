"""Probe benchmark: feature-extraction images/s, and the probes' memory on large feature files.

    .venv/bin/python benchmarks/bench_probe.py extraction [--images 600] [--seconds 20]
    .venv/bin/python benchmarks/bench_probe.py memory [--rows 32768 131072] [--dim 2048]

``extraction`` builds shards of ImageNet-size JPEGs (``imagenet_like``, needs the ``bench``
extra) and measures, in one run, alternating sides, each after the same 3 warm-up batches:
  * ``new``: the probe's path, ``probe.features.measure_extraction`` (DALI → backbone →
    float16 rows written to a file; bf16/channels_last/pinned copies on a GPU);
  * ``old``: the path it replaced: DALI → backbone → float32 features kept in a list;
  * ``torch``: the usual PyTorch extraction loop: webdataset + torchvision v2 + PIL in a
    DataLoader with one worker per core (``datasets.torch_views``) → features kept in a list.
``memory`` writes a synthetic float16 feature file of N × dim with ``classes`` labels for
each N and, in a fresh process each, runs the linear probe (1 epoch) and the kNN
(k = 20, 200; ``queries`` test rows, two full query blocks by default) on it, sampling the
process's anonymous memory (heap, torch tensors: /proc/self/status RssAnon) every 5 ms; the
file's pages are page cache and not counted. The peak not growing with N is the claim; the
README extrapolates to 1.28 M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.loaders import LoaderConfig, build_loader
from sslpipe.datasets.recipes import get_recipe
from sslpipe.datasets.sources import ImageFolderSource
from sslpipe.pipelines.probe.classifiers import Features, knn_probe, linear_probe
from sslpipe.pipelines.probe.features import (
    FEATURE_DTYPE,
    FeatureFile,
    RowWriter,
    create_file,
    images_per_second,
    measure_extraction,
)
from sslpipe.ssl_ops import build_backbone

WARMUP_BATCHES = 3


@torch.no_grad()
def _kept_in_memory(loader: Iterable, backbone: torch.nn.Module) -> Iterator[int]:
    """Epochs of ``loader`` through ``backbone``, every feature kept (as the old probe did)."""
    kept = []
    while True:
        for (images, *_), labels, *_ in loader:
            kept.append(backbone(images))
            yield len(labels)


def extraction(args: argparse.Namespace) -> list[dict]:
    from imagenet_like import write_image_folder

    threads = os.cpu_count() or 1
    recipe = get_recipe("eval")[0]
    backbone = build_backbone(args.backbone).eval()
    config = LoaderConfig(
        batch_size=args.batch_size,
        num_threads=threads,
        shuffle=False,
        drop_last=False,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_image_folder(Path(tmp) / "images", args.images)
        ingest(ImageFolderSource(folder), Path(tmp) / "shards", shard_size=100, val_fraction=0)
        shards = split_shards(Path(tmp) / "shards", "train")
        sides = {
            "new": lambda: measure_extraction(
                shards,
                backbone,
                batch_size=args.batch_size,
                num_threads=threads,
                use_gpu=False,
                seconds=args.seconds,
                warmup_batches=WARMUP_BATCHES,
            ),
            "old": lambda: images_per_second(
                _kept_in_memory(build_loader("dali", shards, [recipe], config), backbone),
                args.seconds,
                WARMUP_BATCHES,
            ),
            "torch": lambda: images_per_second(
                _kept_in_memory(build_loader("torch", shards, [recipe], config), backbone),
                args.seconds,
                WARMUP_BATCHES,
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, measure in sides.items():
                rates[name].append(measure())
    best = {name: max(values) for name, values in rates.items()}
    return [
        {
            "side": name,
            "backbone": args.backbone,
            "images_per_s": round(best[name], 2),
            "rounds": [round(v, 2) for v in rates[name]],
            "ratio_new_over": round(best["new"] / best[name], 3),
        }
        for name in sides
    ]


def _anonymous_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))


class PeakMemory:
    """The process's peak anonymous memory while inside the ``with`` block (5 ms samples)."""

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = _anonymous_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.began = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _anonymous_kib())
            time.sleep(0.005)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self.began

    def report(self) -> dict:
        return {
            "peak_mib": round(self.peak / 1024, 1),
            "over_baseline_mib": round((self.peak - self.base) / 1024, 1),
            "seconds": round(self.seconds, 1),
        }


def memory_worker(path: Path, labels_path: Path, classes: int, queries: int) -> dict:
    """Peak anonymous memory of the linear probe (1 epoch) and the kNN on one feature file."""
    labels = torch.from_numpy(np.load(labels_path))
    train = Features(FeatureFile(path), labels)
    test = Features(FeatureFile(path)[0:queries], labels[:queries])
    cpu = torch.device("cpu")
    baseline = _anonymous_kib()
    with PeakMemory() as linear:
        linear_probe(
            train, test, classes, epochs=1, lr=1e-3, weight_decay=5e-4, batch_size=256, seed=0,
            device=cpu,
        )  # fmt: skip
    with PeakMemory() as knn:
        knn_probe(train, test, classes, ks=[20, 200], temperature=0.07, device=cpu)
    return {
        "rows": train.x.shape[0],
        "dim": train.x.shape[1],
        "queries": queries,
        "baseline_mib": round(baseline / 1024, 1),
        "linear": linear.report(),
        "knn": knn.report(),
    }


def memory(args: argparse.Namespace) -> list[dict]:
    results = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path, labels_path = Path(tmp) / "x.npy", Path(tmp) / "labels.npy"
            create_file(path, (rows, args.dim), FEATURE_DTYPE)
            writer = RowWriter(path)
            for start in range(0, rows, 8192):
                block = np.arange(start, min(start + 8192, rows))
                values = rng.standard_normal((len(block), args.dim), dtype=np.float32)
                writer.write(block, values)
            writer.close()
            np.save(labels_path, rng.integers(0, args.classes, rows))
            command = [sys.executable, __file__, "memory-worker", str(path), str(labels_path)]
            command += [str(args.classes), str(args.queries)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    extract = commands.add_parser("extraction")
    extract.add_argument("--images", type=int, default=600)
    extract.add_argument("--seconds", type=float, default=20.0)
    extract.add_argument("--rounds", type=int, default=2)
    extract.add_argument("--batch-size", type=int, default=32)
    extract.add_argument("--backbone", default="resnet18")
    mem = commands.add_parser("memory")
    mem.add_argument("--rows", type=int, nargs="+", default=[16384, 65536])
    mem.add_argument("--queries", type=int, default=8192)
    mem.add_argument("--dim", type=int, default=2048)
    mem.add_argument("--classes", type=int, default=1000)
    worker = commands.add_parser("memory-worker")
    worker.add_argument("path", type=Path)
    worker.add_argument("labels", type=Path)
    worker.add_argument("classes", type=int)
    worker.add_argument("queries", type=int)
    args = parser.parse_args()
    if args.command == "memory-worker":
        print(json.dumps(memory_worker(args.path, args.labels, args.classes, args.queries)))
        return
    results = extraction(args) if args.command == "extraction" else memory(args)
    load = os.getloadavg()
    print(json.dumps({"load_average": [round(x, 1) for x in load], "results": results}, indent=2))


if __name__ == "__main__":
    main()
