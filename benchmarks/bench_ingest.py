"""Ingestion throughput including validation: CIFAR-size and ImageNet-size JPEGs.

    .venv/bin/python benchmarks/bench_ingest.py [--cifar PATH/train.tar] [--images 1000]

CIFAR: the whole CIFAR-10 train tar (50,000 32×32 JPEGs) read in place by ``TarSource``.
ImageNet-size: ~500×375 JPEGs from ``imagenet_like`` in an image folder. Both go through
``sslpipe.datasets.ingest.ingest`` (the code behind ``sslpipe ingest``) with one worker per
core; the per-core rate is the total divided by the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagenet_like import write_image_folder

from sslpipe.datasets.ingest import ingest
from sslpipe.datasets.sources import ImageFolderSource, TarSource

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train.tar"


def _timed(name: str, source, out: Path, workers: int) -> dict:
    start = time.perf_counter()
    manifest = ingest(source, out, shard_size=10_000, workers=workers)
    seconds = time.perf_counter() - start
    rate = (manifest["num_samples"] + manifest["num_rejected"]) / seconds
    return {
        "set": name,
        "images": manifest["num_samples"],
        "workers": workers,
        "seconds": round(seconds, 2),
        "images_per_s": round(rate, 1),
        "images_per_s_per_core": round(rate / workers, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cifar", type=Path, default=CIFAR)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        if args.cifar.exists():
            print(json.dumps(_timed("cifar10", TarSource(args.cifar), Path(tmp) / "c", workers)))
        folder = write_image_folder(Path(tmp) / "imgs", args.images)
        result = _timed("imagenet_size", ImageFolderSource(folder), Path(tmp) / "i", workers)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
