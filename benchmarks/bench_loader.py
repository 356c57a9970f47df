"""Loader benchmark on ImageNet-size JPEGs: DALI vs torch backend vs the decode-only floor.

    .venv/bin/python benchmarks/bench_loader.py [--images 2000] [--seconds 20] [--json]

Builds shards of ~500×375 JPEGs (``imagenet_like``) in a temporary folder, then measures each
configuration with ``sslpipe.datasets.loader_bench.measure`` (the code behind
``sslpipe bench-loader``). Threads/workers = the machine's cores for every backend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imagenet_like import write_image_folder

from sslpipe.datasets.dali_views import gpu_available
from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.loader_bench import measure
from sslpipe.datasets.sources import ImageFolderSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--recipe", default="vicreg")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_image_folder(Path(tmp) / "images", args.images)
        ingest(ImageFolderSource(folder), Path(tmp) / "shards", shard_size=250, val_fraction=0)
        shards = split_shards(Path(tmp) / "shards", "train")
        runs = [
            ("dali", "cpu", False),
            ("dali", "cpu", True),
            ("torch", "cpu", False),
            ("torch", "cpu", True),
        ]
        if gpu_available():
            runs += [("dali", "gpu", False), ("dali", "gpu", True)]
        results = []
        for backend, device, decode_only in runs:
            result = measure(
                shards,
                backend=backend,
                recipe=args.recipe,
                batch_size=args.batch_size,
                seconds=args.seconds,
                threads=threads,
                device=device,
                decode_only=decode_only,
            )
            results.append(result)
            print(json.dumps(result) if args.json else _row(result), flush=True)


def _row(result: dict) -> str:
    what = "decode only" if result["mode"] == "decode_only" else result["recipe"]
    return (
        f"{result['backend']:>5}-{result['device']}  {what:<12} "
        f"{result['images_per_s']:8.1f} images/s"
    )


if __name__ == "__main__":
    main()
