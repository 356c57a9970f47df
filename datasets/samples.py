"""The unit that flows from a source to the shard writer."""

from __future__ import annotations

from dataclasses import dataclass

UNLABELLED = -1


@dataclass(frozen=True)
class Sample:
    """One image as it will be stored: its key, original encoded bytes, format and label."""

    key: str
    image: bytes
    ext: str
    label: int = UNLABELLED
