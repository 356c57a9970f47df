"""Source → train/val WebDataset shards + ``manifest.json``.

Layout of an ingest output directory::

    manifest.json
    train/shard-000000.tar, train/shard-000000.idx, ...
    val/shard-000000.tar,   val/shard-000000.idx, ...

The split is stratified and depends only on the keys: within each class the items are
ordered by ``sha256(seed:key)`` and the first ``round(val_fraction · n)`` go to ``val``.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .shards import write_shards
from .sources import Item, Source

SPLITS = ("train", "val")
MANIFEST = "manifest.json"


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


def ingest(
    source: Source,
    out_dir: Path,
    *,
    shard_size: int = 10_000,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``source`` into ``out_dir`` as train/val shards and return the manifest."""
    out_dir = Path(out_dir)
    items = source.items()
    if not items:
        raise ValueError("the source has no images")
    manifest: dict[str, Any] = {
        "classes": {name: index for index, name in enumerate(source.classes)},
        "num_classes": len(source.classes),
        "source_fingerprint": source.fingerprint(),
        "val_fraction": val_fraction,
        "splits": {},
    }
    for name, split in split_items(items, val_fraction, seed).items():
        shards = write_shards(
            (source.load(item) for item in split), out_dir / name, max_samples=shard_size
        )
        counts: dict[str, int] = defaultdict(int)
        for item in split:
            counts[source.classes[item.label]] += 1
        manifest["splits"][name] = {
            "num_samples": len(split),
            "class_counts": dict(sorted(counts.items())),
            "shards": [asdict(shard) for shard in shards],
        }
    manifest["num_samples"] = len(items)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(data_dir: Path) -> dict[str, Any]:
    return json.loads((Path(data_dir) / MANIFEST).read_text())


def split_shards(data_dir: Path, split: str) -> list[Path]:
    """Shard paths of one split, in manifest order."""
    info = read_manifest(data_dir)["splits"][split]
    return [Path(data_dir) / split / shard["name"] for shard in info["shards"]]
