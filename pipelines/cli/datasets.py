"""``sslpipe ingest`` and ``sslpipe bench-loader``: thin argument layers over ``sslpipe.datasets``.

Bad input ends as one line before anything is written: an invalid option as a ``UsageError``
(exit 2), a missing source or an unreadable archive as a ``UserError`` (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError, UserError


def source_from_arg(spec: str, *, labelled: bool = True):
    """``SRC`` of ``sslpipe ingest``: a folder, tar, CSV/JSONL list, or ``synthetic:N``."""
    from sslpipe.datasets.sources import SyntheticShapesSource, open_source

    if spec.startswith("synthetic:"):
        count = spec.removeprefix("synthetic:")
        if not count.isdigit() or int(count) == 0:
            raise UsageError(f"{spec}: expected synthetic:N with N > 0")
        return SyntheticShapesSource(int(count))
    try:
        return open_source(Path(spec), labelled=labelled)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise UserError(str(error)) from None


def ingest_images(
    src: str,
    out: Path,
    *,
    shard_size: str,
    val_fraction: float,
    seed: int,
    workers: int,
    labelled: bool,
) -> dict[str, Any]:
    """``sslpipe ingest`` and ``sslpipe.ingest``: the arguments checked, then the manifest of
    the shards written (or found finished) in ``out``."""
    from sslpipe.datasets.ingest import ingest
    from sslpipe.datasets.layout import MANIFEST, PARTIAL, parse_shard_size

    try:
        max_samples, max_bytes = parse_shard_size(shard_size)
    except ValueError as error:
        raise UsageError(f"--shard-size: {error}") from None
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    if out.exists() and (not out.is_dir() or _foreign_content(out, MANIFEST, PARTIAL)):
        raise UsageError(f"--out {out}: exists and is not an ingest output folder")
    source = source_from_arg(src, labelled=labelled)
    try:
        return ingest(
            source,
            out,
            shard_size=max_samples,
            shard_bytes=max_bytes,
            val_fraction=val_fraction,
            seed=seed,
            workers=workers,
        )
    except ValueError as error:
        raise UserError(str(error)) from None


def _ingest(args: argparse.Namespace) -> None:
    out = Path(args.out)
    manifest = ingest_images(
        args.src,
        out,
        shard_size=args.shard_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        labelled=not args.unlabelled,
    )
    splits = ", ".join(f"{n} {s['num_samples']}" for n, s in manifest["splits"].items())
    print(
        f"{out}: {manifest['num_samples']} images ({splits}), {manifest['num_classes']} classes, "
        f"{manifest['num_rejected']} rejected"
        + (f" (see {out / 'rejected.jsonl'})" if manifest["num_rejected"] else "")
    )


def _foreign_content(out: Path, *ours: str) -> bool:
    names = {p.name for p in out.iterdir()}
    return bool(names) and not names & set(ours)


def register_ingest(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "ingest", help="turn images into validated WebDataset shards with DALI indexes"
    )
    parser.add_argument(
        "src", help="image folder, .tar (also of per-class tars), .csv/.jsonl list, synthetic:N"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--shard-size", default="10000", help="samples per shard, or bytes like 512MB"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of each class for the val split"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="checking processes (default: cores)",
    )
    parser.add_argument("--unlabelled", action="store_true", help="every image gets label -1")
    parser.set_defaults(handler=_ingest)


def _shard_paths(paths: list[str]) -> list[Path]:
    from sslpipe.datasets.ingest import split_shards
    from sslpipe.datasets.layout import MANIFEST
    from sslpipe.datasets.shards import list_shards

    shards: list[Path] = []
    for text in paths:
        path = Path(text)
        if (path / MANIFEST).exists():
            shards += split_shards(path, "train")
        elif path.is_dir():
            shards += list_shards(path)
        elif path.is_file() and path.suffix == ".tar":
            shards.append(path)
        else:
            raise UserError(f"{path}: not a shard, a folder of shards or an ingest output")
    if not shards:
        raise UserError(f"no shards found in {' '.join(paths)}")
    return shards


def _bench_loader(args: argparse.Namespace) -> None:
    from sslpipe.datasets.loader_bench import measure
    from sslpipe.datasets.loaders import LOADER_BACKENDS, LoaderConfig
    from sslpipe.datasets.recipes import PRESETS, apply_overrides, get_recipe

    if args.backend not in LOADER_BACKENDS:
        raise UsageError(f"--backend {args.backend!r}: choose one of {', '.join(LOADER_BACKENDS)}")
    unset = LoaderConfig(batch_size=args.batch_size)  # the loader's defaults, one place
    prefetch = unset.prefetch if args.prefetch is None else args.prefetch
    hw_load = unset.hw_decoder_load if args.hw_decoder_load is None else args.hw_decoder_load
    if args.recipe not in PRESETS:
        raise UsageError(f"--recipe {args.recipe!r}: choose one of {', '.join(sorted(PRESETS))}")
    if (
        args.batch_size < 1
        or args.seconds <= 0
        or args.threads < 1
        or (prefetch is not None and prefetch < 1)
    ):
        raise UsageError("--batch-size, --seconds, --threads and --prefetch must be positive")
    if not 0 <= hw_load <= 1:
        raise UsageError(f"--hw-decoder-load {hw_load}: must be in [0, 1]")
    shards = _shard_paths(args.shards)
    recipes = get_recipe(args.recipe)
    if args.size is not None:
        recipes = apply_overrides(recipes, {"size": args.size})
    config = LoaderConfig(
        batch_size=args.batch_size,
        num_threads=args.threads,
        prefetch=prefetch,
        device=args.device,
        decode=args.decode,
        hw_decoder_load=hw_load,
    )
    try:
        result = measure(
            shards,
            recipes,
            config,
            backend=args.backend,
            seconds=args.seconds,
            decode_only=args.decode_only,
        )
    except (ValueError, ImportError) as error:
        raise UserError(str(error)) from None
    result["recipe"] = None if args.decode_only else args.recipe
    if args.json:
        print(json.dumps(result))
    else:
        what = "decode only" if args.decode_only else f"{args.recipe}, {result['views']} views"
        print(
            f"{result['backend']}-{result['device']} ({what}, batch {args.batch_size}, "
            f"{args.threads} threads): {result['images_per_s']:.1f} images/s "
            f"(first batch after {result['first_batch_s']} s, load {result['load_1min']})"
        )


def register_bench_loader(commands: argparse._SubParsersAction) -> None:
    # Defaults and choices are the loader's, read when the command runs: building the parser
    # of every command must not import the loaders (numpy, and DALI's or torch's code).
    parser = commands.add_parser("bench-loader", help="measure a loader's source images per second")
    parser.add_argument("shards", nargs="+", help="ingest output, folder of shards, or .tar")
    parser.add_argument("--backend", default="dali", help="the loader to measure: dali or torch")
    parser.add_argument("--recipe", default="vicreg", help="view preset (sslpipe methods)")
    parser.add_argument("--size", type=int, help="override every view's output size")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured, after warm-up")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="loader threads (default: cores)"
    )
    parser.add_argument(
        "--prefetch", type=int, help="batches prepared ahead (default: the loader's)"
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: GPU if there is one"
    )
    parser.add_argument(
        "--decode", choices=("auto", "once", "per_view"), default="auto",
        help="DALI: decode each image once for all views, or each view's crop on its own",
    )  # fmt: skip
    parser.add_argument(
        "--hw-decoder-load", type=float,
        help="DALI on GPU: share of JPEGs for the hardware decoder (default: the loader's)",
    )  # fmt: skip
    parser.add_argument("--decode-only", action="store_true", help="read + decode: the floor")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_bench_loader)
