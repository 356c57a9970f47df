"""Source → validated train/val WebDataset shards + ``manifest.json`` + ``rejected.jsonl``.

Layout of an ingest output directory::

    manifest.json
    rejected.jsonl                       one {"locator", "reason", "detail"} per rejected input
    train/shard-000000.tar, train/shard-000000.idx, ...
    val/shard-000000.tar,   val/shard-000000.idx, ...

Each sample is ``KEY.<ext>`` (the original image bytes, ``ext`` from the detected format) and
``KEY.label.i32`` (int32 little-endian, read by DALI with ``dtypes=INT32``; −1 = unlabelled); see
``shards``. The split is stratified and depends only on the keys: within each class the items
are ordered by ``sha256(seed:key)`` and the first ``round(val_fraction · n)`` go to ``val``.
It is made from the listing, before validation, so a rejected file leaves a hole in its split
rather than reshuffling the others.

Every input is loaded and checked (``validate.check_image``) in ``workers`` processes; the
parent writes the results in listing order, so the output is byte-identical for any number of
workers. Work happens in ``out_dir/.partial``: each finished shard is recorded in a journal,
an interrupted run with the same source and settings resumes after the last recorded shard,
and the finished splits are moved into place before the manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .layout import JOURNAL, MANIFEST, PARTIAL, REJECTED, SPLITS
from .progress import Progress
from .samples import UNLABELLED, Sample
from .shards import ShardInfo, ShardWriter
from .sources import Item, Rejection, Source
from .validate import DEFAULT_MAX_PIXELS, Rejected, check_image

LABEL_FORMAT = "KEY.label.i32: int32 little-endian (DALI dtypes=INT32), -1 = unlabelled"
_UNLABELLED_CLASS = "unlabelled"


def split_items(items: list[Item], val_fraction: float, seed: int) -> dict[str, list[Item]]:
    by_class: dict[int, list[Item]] = defaultdict(list)
    for item in items:
        by_class[item.label].append(item)
    split: dict[str, list[Item]] = {name: [] for name in SPLITS}
    for label in sorted(by_class):
        ranked = sorted(
            by_class[label], key=lambda it: hashlib.sha256(f"{seed}:{it.key}".encode()).digest()
        )
        num_val = round(val_fraction * len(ranked))
        split["val"] += ranked[:num_val]
        split["train"] += ranked[num_val:]
    for name in SPLITS:
        split[name].sort(key=lambda it: it.key)
    return split


# Per worker process: the source and pixel limit, set once by the pool initializer.
_worker: dict[str, Any] = {}


def _init_worker(source: Source, max_pixels: int) -> None:
    _worker.update(source=source, max_pixels=max_pixels)


def _load_checked(item: Item) -> Sample | Rejection:
    """The sample ready to write, or why it is rejected; never raises for bad input."""
    try:
        sample = _worker["source"].load(item)
    except OSError as error:
        return Rejection(item.locator, "missing", str(error))
    try:
        data, ext = check_image(sample.image, max_pixels=_worker["max_pixels"])
    except Rejected as rejected:
        return Rejection(item.locator, rejected.reason, rejected.detail)
    return Sample(sample.key, data, ext, sample.label)


def _checked(items: list[Item], source: Source, workers: int, max_pixels: int) -> Iterator:
    if workers <= 1 or len(items) < 2 * workers:
        _init_worker(source, max_pixels)
        yield from map(_load_checked, items)
        return
    # spawn, not fork: the caller may already run DALI or torch threads.
    context = multiprocessing.get_context("spawn")
    with _started_apart():
        pool = context.Pool(workers, _init_worker, (source, max_pixels))
    with pool:
        yield from pool.imap(_load_checked, items, chunksize=32)


@contextmanager
def _started_apart() -> Iterator[None]:
    """While worker processes start: SIGINT ignored, which they inherit and Python leaves
    ignored (Ctrl-C reaches the whole process group; the parent stops them), and the caller's
    main module hidden, which spawn would run again in each of them (a script without a
    ``__main__`` guard would start its own work over in every worker; from stdin, the workers
    die at start). The workers need only this module."""
    main = sys.modules["__main__"]
    path, spec = main.__dict__.pop("__file__", None), getattr(main, "__spec__", None)
    main.__spec__ = None
    on_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if on_main_thread else None
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        main.__spec__ = spec
        if path is not None:
            main.__file__ = path


class _Journal:
    """Append-only record of finished shards in ``.partial``; what a resumed run skips."""

    def __init__(self, partial: Path, params: dict[str, Any]) -> None:
        self.path = partial / JOURNAL
        self.done: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        if not lines or _parse(lines[0]) != {"params": params}:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            self._append({"params": params})
            return
        for line in lines[1:]:
            entry = _parse(line)
            if entry is None:  # a line torn by the interruption: that shard is redone
                break
            self.done[entry["split"]].append(entry)
        for name, entries in self.done.items():
            for entry in entries:
                if not (partial / name / entry["shard"]["name"]).exists():
                    self.done[name] = entries[: entries.index(entry)]
                    break
        self.path.write_text("".join(line + "\n" for line in lines[: 1 + self.num_entries]))

    @property
    def num_entries(self) -> int:
        return sum(len(entries) for entries in self.done.values())

    def record(self, split: str, shard: ShardInfo, consumed: int, rejections: list) -> None:
        entry = {
            "split": split,
            "shard": asdict(shard),
            "consumed": consumed,
            "rejections": [asdict(r) for r in rejections],
        }
        self.done[split].append(entry)
        self._append(entry)

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _parse(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def ingest(
    source: Source,
    out_dir: Path,
    *,
    shard_size: int = 10_000,
    shard_bytes: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Write ``source`` into ``out_dir`` as train/val shards and return the manifest.

    ``shard_size`` caps samples per shard and ``shard_bytes`` (if set) bytes per shard.
    ``progress=None`` shows a bar (images/s, ETA) only when stderr is a terminal. A finished
    ``out_dir`` with the same source fingerprint and settings is returned unchanged.
    """
    out_dir = Path(out_dir)
    items = source.items()
    if not items:
        raise ValueError("the source has no images")
    params = {
        "source_fingerprint": source.fingerprint(),
        "shard_size": shard_size,
        "shard_bytes": shard_bytes,
        "val_fraction": val_fraction,
        "seed": seed,
        "max_pixels": max_pixels,
    }
    if (out_dir / MANIFEST).exists():
        previous = read_manifest(out_dir)
        if previous.get("params") == params:
            return previous
    partial = out_dir / PARTIAL
    journal = _Journal(partial, params)
    splits = split_items(items, val_fraction, seed)
    if journal.num_entries:
        kept = sum(entries[-1]["consumed"] for entries in journal.done.values() if entries)
        print(
            f"[ingest] resumed from image {kept} of {len(items)} "
            f"({journal.num_entries} finished shard(s) kept)",
            flush=True,
        )
    bar = Progress("ingest", len(items), unit="image", bar=progress)
    rejections = list(source.rejections)
    split_info = {}
    for name, split in splits.items():
        done = journal.done[name]
        consumed = done[-1]["consumed"] if done else 0
        rejections += [Rejection(**r) for entry in done for r in entry["rejections"]]
        bar.update(consumed)
        shards = [ShardInfo(**entry["shard"]) for entry in done]
        if consumed < len(split) or not split:
            shards += _write_split(
                name, split, consumed, source, partial, journal, rejections, bar,
                max_samples=shard_size, max_bytes=shard_bytes or sys.maxsize,
                workers=workers, max_pixels=max_pixels,
            )  # fmt: skip
        split_info[name] = shards
    bar.close()
    return _finish(source, out_dir, partial, params, splits, split_info, rejections)


def _write_split(
    name: str,
    split: list[Item],
    consumed: int,
    source: Source,
    partial: Path,
    journal: _Journal,
    rejections: list[Rejection],
    bar: Progress,
    *,
    max_samples: int,
    max_bytes: int,
    workers: int,
    max_pixels: int,
) -> list[ShardInfo]:
    """Write ``split[consumed:]``, journaling each closed shard; returns the new shards."""
    todo = split[consumed:]
    first = len(journal.done[name])
    pending: list[Rejection] = []  # rejections since the last journaled shard
    writer = ShardWriter(
        partial / name, max_samples=max_samples, max_bytes=max_bytes, first_index=first
    )
    with writer:
        for index, result in enumerate(_checked(todo, source, workers, max_pixels)):
            bar.update(1)
            if isinstance(result, Rejection):
                pending.append(result)
                rejections.append(result)
                continue
            closed = len(writer.shards)
            writer.write(result)
            if len(writer.shards) > closed:  # writing this sample closed the previous shard
                journal.record(name, writer.shards[-1], consumed + index, pending)
                pending = []
        journaled = len(writer.shards)
    if len(writer.shards) > journaled:  # closing the writer finished the last shard
        journal.record(name, writer.shards[-1], len(split), pending)
    return writer.shards


def _finish(
    source: Source,
    out_dir: Path,
    partial: Path,
    params: dict[str, Any],
    splits: dict[str, list[Item]],
    shards: dict[str, list[ShardInfo]],
    rejections: list[Rejection],
) -> dict[str, Any]:
    """Move the finished output into ``out_dir``; the manifest goes last, so it never lists
    shards that are not in place."""
    rejected_keys = {r.locator for r in rejections}
    manifest: dict[str, Any] = {
        "classes": {name: index for index, name in enumerate(source.classes)},
        "num_classes": len(source.classes),
        "source_fingerprint": params["source_fingerprint"],
        "val_fraction": params["val_fraction"],
        "label_format": LABEL_FORMAT,
        "params": params,
        "splits": {},
    }
    for name, split in splits.items():
        accepted = [item for item in split if item.locator not in rejected_keys]
        counts = Counter(
            _UNLABELLED_CLASS if item.label == UNLABELLED else source.classes[item.label]
            for item in accepted
        )
        assert len(accepted) == sum(shard.num_samples for shard in shards[name])
        manifest["splits"][name] = {
            "num_samples": len(accepted),
            "class_counts": dict(sorted(counts.items())),
            "shards": [asdict(shard) for shard in shards[name]],
        }
    manifest["num_samples"] = sum(split["num_samples"] for split in manifest["splits"].values())
    rejections = sorted(rejections, key=lambda r: (r.locator, r.reason))
    manifest["num_rejected"] = len(rejections)
    manifest["rejected"] = dict(sorted(Counter(r.reason for r in rejections).items()))
    (partial / REJECTED).write_text(
        "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rejections)
    )
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for name in (*SPLITS, REJECTED):
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(partial / name, target)
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (partial / MANIFEST).write_text(text)
    os.replace(partial / MANIFEST, out_dir / MANIFEST)
    shutil.rmtree(partial)
    return manifest


def read_manifest(data_dir: Path) -> dict[str, Any]:
    return json.loads((Path(data_dir) / MANIFEST).read_text())


def split_shards(data_dir: Path, split: str) -> list[Path]:
    """Shard paths of one split, in manifest order."""
    info = read_manifest(data_dir)["splits"][split]
    return [Path(data_dir) / split / shard["name"] for shard in info["shards"]]
