"""Loader benchmark on ImageNet-size JPEGs: a plain webdataset loader, our two backends and
their decode-only floors, in one run.

    .venv/bin/python benchmarks/bench_loader.py [--images 2000] [--seconds 20] [--json]
    # before/after: the graph of another commit beside today's, in the same run
    git show <commit>:datasets/dali_views.py > /tmp/before_dali_views.py
    .venv/bin/python benchmarks/bench_loader.py --rows plain,dali \\
        --compare-graph /tmp/before_dali_views.py
    # the GPU sweep: every combination of the listed settings, DALI on the GPU
    .venv/bin/python benchmarks/bench_loader.py --device gpu --recipes vicreg,pirl,multicrop \\
        --threads 4,8,12 --decode once,per_view --hw-decoder-load 0.65,0.9 --prefetch 2,3

Builds shards of ~500×375 JPEGs (``imagenet_like``, needs the ``bench`` extra) in a temporary
folder, then times each row with ``sslpipe.datasets.loader_bench.time_batches`` (the code behind
``sslpipe bench-loader``): the first ``WARMUP_BATCHES`` batches of every loader are not
counted (start-up, shuffle buffers, what the loader queued meanwhile).

On the CPU (the default) the rows are: ``plain``, VICReg's augmentations as people write them
with webdataset + torchvision v2 + PIL blur and a DataLoader (``plain_vicreg_batches``; only
for ``vicreg``); our ``torch`` backend; ``dali`` on the CPU with each decode mode; and the
decode-only floors (``--rows`` picks among them). Threads / worker processes are
``--threads`` for every loader. Each DALI row also reports its rate over the ``plain`` row's in
the same round (rows are measured in turn, so both see the same machine load), and
``--compare-graph`` adds a row per given copy of ``datasets/dali_views.py`` (its
``DaliViewLoader`` with the same settings), kept outside the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import webdataset as wds
from imagenet_like import write_image_folder
from PIL import ImageFilter, ImageOps
from torchvision.transforms import v2

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.loader_bench import batches, describe, time_batches
from sslpipe.datasets.loaders import LoaderConfig, with_defaults
from sslpipe.datasets.recipes import apply_overrides, get_recipe
from sslpipe.datasets.shards import LABEL_EXT, decode_label
from sslpipe.datasets.sources import ImageFolderSource


class GaussianBlur:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(random.uniform(0.1, 2.0)))
        return img


class Solarization:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


def vicreg_view(blur_p: float, solarize_p: float) -> v2.Compose:
    """facebookresearch/vicreg augmentations.py TrainTransform, in torchvision v2."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(224, interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply(
                [v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
            ),
            v2.RandomGrayscale(p=0.2),
            GaussianBlur(blur_p),
            Solarization(solarize_p),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


class TwoViews:
    def __init__(self) -> None:
        self.first, self.second = vicreg_view(1.0, 0.0), vicreg_view(0.1, 0.2)

    def __call__(self, image):
        return self.first(image), self.second(image)


def plain_vicreg_batches(shards: list[Path], batch_size: int, workers: int) -> Iterator[int]:
    """The plain loader: webdataset's default decoders, a 1000-sample shuffle buffer."""
    dataset = (
        wds.WebDataset([str(s) for s in shards], shardshuffle=len(shards), empty_check=False)
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg", LABEL_EXT)
        .map_tuple(TwoViews(), decode_label)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    while True:
        for _, labels in loader:
            yield len(labels)


def compared_graph_batches(
    path: Path, shards: list[Path], recipes: list, config: LoaderConfig
) -> Iterator[int]:
    """The batch sizes of the ``DaliViewLoader`` of another copy of ``datasets/dali_views.py``
    (imported as a module of ``sslpipe.datasets``, so that its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location(f"sslpipe.datasets.{path.stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loader = module.DaliViewLoader(shards, recipes, with_defaults(config, shards))
    while True:
        for _, labels, *_ in loader:
            yield len(labels)


# Where the time goes in the DALI graph: the vicreg views with later steps switched off.
NO_COLOUR = {"jitter_p": 0, "grayscale_p": 0, "blur_p": 0, "solarize_p": 0, "flip_p": 0}
BREAKDOWN = {
    "crop + resize only": NO_COLOUR,
    "+ colour jitter, grayscale": {"blur_p": 0, "solarize_p": 0, "flip_p": 0},
    "+ blur": {"solarize_p": 0, "flip_p": 0},
    "bilinear, not bicubic": {"interpolation": "bilinear"},
}


@dataclass
class Row:
    """One loader of the run: what it is, how to start its stream of batch sizes, and what
    each round measured."""

    info: dict[str, Any]
    start: Callable[[], Iterator[int]]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def measure(self, seconds: float) -> None:
        """One round: a fresh loader, timed after warm-up, then stopped (its worker processes
        and threads end, so that they use no CPU while the next row is measured)."""
        stream = self.start()
        self.rounds.append(time_batches(stream, seconds=seconds))
        stream.close()
        del stream
        gc.collect()


ROWS = ("plain", "torch", "dali", "floors")


def _list(kind):
    return lambda text: [kind(x) for x in text.split(",")]


def _rows(args: argparse.Namespace, shards: list[Path]) -> list[Row]:
    rows = []
    cpu = args.device == "cpu"
    for recipe, threads in itertools.product(args.recipes, args.threads):
        base = LoaderConfig(batch_size=args.batch_size, num_threads=threads, device=args.device)
        recipes = get_recipe(recipe)
        if cpu and recipe == "vicreg" and "plain" in args.rows:
            info = {"backend": "plain", "device": "cpu", "num_threads": threads, "views": 2}
            start = partial(plain_vicreg_batches, shards, args.batch_size, threads)
            rows.append(Row({**info, "recipe": recipe}, start))
        if cpu and "torch" in args.rows:
            info = describe(base, backend="torch", views=len(recipes))
            start = partial(batches, shards, recipes, base, backend="torch")
            rows.append(Row({**info, "recipe": recipe}, start))
        combinations = itertools.product(args.decode, args.prefetch, args.hw_decoder_load)
        for decode, prefetch, hw_load in combinations if "dali" in args.rows else ():
            config = dataclasses.replace(
                base, decode=decode, prefetch=prefetch, hw_decoder_load=hw_load
            )
            info = describe(config, backend="dali", views=len(recipes))
            rows.append(Row({**info, "recipe": recipe}, partial(batches, shards, recipes, config)))
            for path in args.compare_graph:
                start = partial(compared_graph_batches, path, shards, recipes, config)
                rows.append(Row({**info, "recipe": f"{recipe}, graph {path.name}"}, start))
    if args.breakdown:
        config = LoaderConfig(batch_size=args.batch_size, num_threads=args.threads[0],
                              device=args.device, decode="once")  # fmt: skip
        for stage, overrides in BREAKDOWN.items():
            recipes = apply_overrides(get_recipe("vicreg"), overrides)
            info = {**describe(config, backend="dali", views=2), "recipe": f"vicreg, {stage}"}
            rows.append(Row(info, partial(batches, shards, recipes, config)))
    config = LoaderConfig(batch_size=args.batch_size, num_threads=args.threads[0],
                          device=args.device)  # fmt: skip
    for backend in (("dali", "torch") if cpu else ("dali",)) if "floors" in args.rows else ():
        info = {**describe(config, backend=backend, views=None, decode_only=True),
                "recipe": "decode only"}  # fmt: skip
        start = partial(batches, shards, [], config, backend=backend, decode_only=True)
        rows.append(Row(info, start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rows measured in turn, N times")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--recipes", type=_list(str), default=["vicreg"])
    parser.add_argument("--threads", type=_list(int), default=[2])
    parser.add_argument("--decode", type=_list(str), default=["once", "per_view"])
    parser.add_argument("--prefetch", type=_list(int), default=[LoaderConfig(1).prefetch])
    parser.add_argument(
        "--hw-decoder-load", type=_list(float), default=[LoaderConfig(1).hw_decoder_load]
    )
    parser.add_argument("--breakdown", action="store_true", help="DALI rows per graph step")
    parser.add_argument(
        "--rows", type=_list(str), default=list(ROWS), help=f"among {', '.join(ROWS)}"
    )
    parser.add_argument(
        "--compare-graph",
        type=_list(Path),
        default=[],
        help="copies of datasets/dali_views.py (e.g. of another commit) to time beside it",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_image_folder(Path(tmp) / "images", args.images)
        ingest(ImageFolderSource(folder), Path(tmp) / "shards", shard_size=250, val_fraction=0)
        rows = _rows(args, split_shards(Path(tmp) / "shards", "train"))
        # In turn, so that a change in the machine's load falls on every row alike.
        for _ in range(args.rounds):
            for row in rows:
                row.measure(args.seconds)
        plain = next((row for row in rows if row.info["backend"] == "plain"), None)
        for row in rows:
            _report(row, plain, args.json)


def _report(row: Row, plain: Row | None, as_json: bool) -> None:
    rates = sorted(r["images_per_s"] for r in row.rounds)
    ratios = []
    if plain is not None and row.info["backend"] == "dali" and row.info["mode"] == "views":
        pairs = zip(row.rounds, plain.rounds, strict=True)
        ratios = [round(r["images_per_s"] / p["images_per_s"], 2) for r, p in pairs]
    result = {
        **row.info,
        "images_per_s": statistics.median(rates),
        "images_per_s_rounds": [r["images_per_s"] for r in row.rounds],
        "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in row.rounds),
        "first_batch_s": row.rounds[0]["first_batch_s"],
        "load_1min": [r["load_1min"] for r in row.rounds],
        **({"vs_plain": statistics.median(ratios), "vs_plain_rounds": ratios} if ratios else {}),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.node()}",
    }
    if as_json:
        print(json.dumps(result), flush=True)
        return
    settings = f"threads {result['num_threads']}"
    if result["backend"] == "dali" and result.get("mode") == "views":
        settings += f", decode {result['decode']}, prefetch {result['prefetch']}"
        if "hw_decoder_load" in result:
            settings += f", hw load {result['hw_decoder_load']}"
    print(
        f"{result['backend']:>5}-{result['device']}  {result['recipe']:<36} {settings:<38} "
        f"{result['images_per_s']:8.1f} images/s {result['cpu_ms_per_image']:6.2f} CPU ms/image "
        f"(rounds {rates}, first batch "
        f"{result['first_batch_s']} s, load {result['load_1min']})"
        + (f", {result['vs_plain']}× plain (rounds {ratios})" if ratios else ""),
        flush=True,
    )


if __name__ == "__main__":
    main()
