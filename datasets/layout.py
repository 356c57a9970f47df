"""What an ingested dataset folder holds, by name, and how a shard size is written.

Imports nothing heavy: ``sslpipe validate`` and the pipeline's file names read it.
"""

from __future__ import annotations

import re
import sys

SPLITS = ("train", "val")
MANIFEST = "manifest.json"  # splits, classes, shards and the source's fingerprint
REJECTED = "rejected.jsonl"  # one line per input that was not ingested, with the reason
PARTIAL = ".partial"  # suffix of the folder an unfinished ingest writes into
JOURNAL = "journal.jsonl"  # finished shards of an unfinished ingest (resume)


def parse_shard_size(text: str) -> tuple[int, int | None]:
    """``"10000"`` → (10000 samples, no byte cap); ``"512MB"``/``"1GiB"`` → byte cap."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]i?b?|b)?\s*", text, re.IGNORECASE)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"shard size {text!r}: expected a sample count or bytes like 512MB")
    number, unit = int(match.group(1)), (match.group(2) or "").lower()
    if not unit:
        return number, None
    power = " kmgt".index(unit[0]) if unit[0] in "kmgt" else 0
    base = 1024 if "i" in unit else 1000
    return sys.maxsize, number * base**power
