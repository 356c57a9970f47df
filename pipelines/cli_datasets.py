"""``sslpipe ingest`` and ``sslpipe bench-loader``: thin argument layers over ``sslpipe.datasets``.

Bad input (a missing source, an unreadable archive, invalid options) ends as one ``UserError``
line before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .errors import UserError


def source_from_arg(spec: str, *, labelled: bool = True):
    """``SRC`` of ``sslpipe ingest``: a folder, tar, CSV/JSONL list, or ``synthetic:N``."""
    from sslpipe.datasets.sources import SyntheticShapesSource, open_source

    if spec.startswith("synthetic:"):
        count = spec.removeprefix("synthetic:")
        if not count.isdigit() or int(count) == 0:
            raise UserError(f"{spec}: expected synthetic:N with N > 0")
        return SyntheticShapesSource(int(count))
    try:
        return open_source(Path(spec), labelled=labelled)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise UserError(str(error)) from None


def _ingest(args: argparse.Namespace) -> None:
    from sslpipe.datasets.ingest import MANIFEST, PARTIAL, ingest, parse_shard_size

    try:
        max_samples, max_bytes = parse_shard_size(args.shard_size)
    except ValueError as error:
        raise UserError(str(error)) from None
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or _foreign_content(out, MANIFEST, PARTIAL)):
        raise UserError(f"--out {out}: exists and is not an ingest output folder")
    source = source_from_arg(args.src, labelled=not args.unlabelled)
    try:
        manifest = ingest(
            source,
            out,
            shard_size=max_samples,
            shard_bytes=max_bytes,
            val_fraction=args.val_fraction,
            seed=args.seed,
            workers=args.workers,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
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
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--unlabelled", action="store_true", help="every image gets label -1")
    parser.set_defaults(handler=_ingest)


def _shard_paths(paths: list[str]) -> list[Path]:
    from sslpipe.datasets.ingest import MANIFEST, split_shards
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
    from sslpipe.datasets.recipes import PRESETS

    if args.recipe not in PRESETS:
        raise UserError(f"--recipe {args.recipe!r}: choose one of {', '.join(sorted(PRESETS))}")
    if args.batch_size < 1 or args.seconds <= 0 or args.threads < 1:
        raise UserError("--batch-size, --seconds and --threads must be positive")
    shards = _shard_paths(args.shards)
    try:
        result = measure(
            shards,
            backend=args.backend,
            recipe=args.recipe,
            batch_size=args.batch_size,
            seconds=args.seconds,
            threads=args.threads,
            device=args.device,
            decode_only=args.decode_only,
            size=args.size,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.json:
        print(json.dumps(result))
    else:
        what = "decode only" if args.decode_only else f"{args.recipe}, {result['views']} views"
        print(
            f"{result['backend']}-{result['device']} ({what}, batch {args.batch_size}, "
            f"{args.threads} threads): {result['images_per_s']:.1f} images/s"
        )


def register_bench_loader(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("bench-loader", help="measure a loader's source images per second")
    parser.add_argument("shards", nargs="+", help="ingest output, folder of shards, or .tar")
    parser.add_argument("--backend", choices=("dali", "torch"), default="dali")
    parser.add_argument("--recipe", default="vicreg")
    parser.add_argument("--size", type=int, help="override every view's output size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--decode-only", action="store_true", help="read + decode: the floor")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_bench_loader)
