"""Where each sample's members are in the shards, and reading them: what both loaders need to
fetch any sample of a split by its position (the global epoch order, ``loaders.EpochPlan``).

The table comes from the shards' DALI ``.idx`` files (no tar is read); a ``SampleReader``
returns a sample's encoded image, label and split index with one read per sample (a
memory-map slice, or ``pread`` for network filesystems; several threads may read at once).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .shards import IMAGE_EXTS, INDEX_EXT, LABEL_EXT, LEGACY_EXTS, index_path


@dataclass(frozen=True)
class SampleTable:
    """Where each sample's members are, read from the shards' DALI ``.idx`` files: per
    sample its shard and the (offset, size) of its image, label and (−1 if absent) index."""

    shards: list[str]
    shard: np.ndarray  # int32 (N,)
    image: np.ndarray  # int64 (N, 2)
    label: np.ndarray  # int64 (N, 2)
    index: np.ndarray  # int64 (N, 2)

    @classmethod
    def read(cls, shards: Sequence[Path]) -> SampleTable:
        shard_of, image, label, index = [], [], [], []
        names = {LABEL_EXT: label, LEGACY_EXTS[LABEL_EXT]: label}
        names |= {INDEX_EXT: index, LEGACY_EXTS[INDEX_EXT]: index}
        for number, shard in enumerate(shards):
            with open(index_path(Path(shard))) as handle:
                handle.readline()  # "v1.2 <count>"
                for line in handle:
                    fields = line.split()
                    members = {
                        fields[i]: (int(fields[i + 1]), int(fields[i + 2]))
                        for i in range(0, len(fields), 4)
                    }
                    shard_of.append(number)
                    image.append(next(members[e] for e in IMAGE_EXTS if e in members))
                    for ext, column in names.items():
                        if ext in members:
                            column.append(members[ext])
                    if len(index) < len(shard_of):
                        index.append((-1, 0))
        return cls(
            [str(s) for s in shards],
            np.asarray(shard_of, dtype=np.int32),
            np.asarray(image, dtype=np.int64).reshape(-1, 2),
            np.asarray(label, dtype=np.int64).reshape(-1, 2),
            np.asarray(index, dtype=np.int64).reshape(-1, 2),
        )

    def __len__(self) -> int:
        return len(self.shard)


class SampleReader:
    """``sample`` → ``(encoded image, label, split index)`` (index −1 when the shard has none);
    files are opened lazily, in the process that reads."""

    def __init__(self, table: SampleTable, memory_map: bool) -> None:
        self.table = table
        self.memory_map = memory_map
        self._files: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Without open files: workers started by spawn (macOS, Windows) open their own."""
        return {**self.__dict__, "_files": {}}

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        if shard not in self._files:
            path = self.table.shards[shard]
            if self.memory_map:
                with open(path, "rb") as handle:
                    self._files[shard] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            else:
                self._files[shard] = os.open(path, os.O_RDONLY)  # kept for the next reads
        source = self._files[shard]
        if self.memory_map:
            return source[offset : offset + size]
        return os.pread(source, size, offset)  # no shared file position: threads may read

    def read(self, sample: int) -> tuple[bytes, int, int]:
        table = self.table
        # One read from the image's start to the end of the last member used.
        spans = [table.image[sample], table.label[sample]]
        if table.index[sample, 0] >= 0:
            spans.append(table.index[sample])
        start = int(spans[0][0])
        data = self._read(
            int(table.shard[sample]), start, int(max(o + s for o, s in spans)) - start
        )

        def member(span: np.ndarray) -> bytes:
            return data[int(span[0]) - start : int(span[0] + span[1]) - start]

        label = int(np.frombuffer(member(table.label[sample]), "<i4")[0])
        index = int(np.frombuffer(member(spans[2]), "<i8")[0]) if len(spans) > 2 else -1
        return member(table.image[sample]), label, index
