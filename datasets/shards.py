"""WebDataset shards with DALI index files, written deterministically and atomically.

Each sample in a shard is three tar members sharing the key:

* ``KEY.<ext>``  the original encoded image (``jpg``, ``png``, ...);
* ``KEY.label.i32``  the label as a 4-byte little-endian int32, which
  ``fn.readers.webdataset(..., dtypes=[UINT8, INT32])`` reads directly (−1 = unlabelled);
* ``KEY.index.i64``  the sample's position in its split (0 … n−1 in writing order, across the
  split's shards) as an 8-byte little-endian int64 (DALI ``INT64``): a stable per-image id
  for methods that keep per-image state, such as PIRL's memory bank.

The binary fields end in their dtype (``.i32``/``.i64``) so that no reader guesses a format
from the name: webdataset's default decoders go by the last part of the extension and would
parse a member named ``KEY.index`` as ASCII text. DALI matches the whole extension after the
key (``label.i32``); readers also accept the names shards had before (``LEGACY_EXTS``).

Members carry fixed metadata (mtime 0, uid/gid 0, mode 0644), so the same samples in the
same order give byte-identical tars. A shard is written to ``.name.tmp`` and renamed when
complete, so a partial shard is never visible under its final name. The DALI index
(``shard-NNNNNN.idx``, format ``v1.2``, the one DALI's ``wds2idx`` writes) is produced from the
offsets recorded while writing, without re-reading the tar.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .samples import Sample

LABEL_EXT = "label.i32"
INDEX_EXT = "index.i64"
LEGACY_EXTS = {LABEL_EXT: "label", INDEX_EXT: "index"}  # names written before 2026-12
IMAGE_EXTS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "jp2", "pnm", "ppm", "pgm")
DALI_INDEX_VERSION = "v1.2"
_BLOCK = tarfile.BLOCKSIZE


def encode_label(label: int) -> bytes:
    return struct.pack("<i", label)


def decode_label(data: bytes) -> int:
    return struct.unpack("<i", data)[0]


def encode_index(index: int) -> bytes:
    return struct.pack("<q", index)


def decode_index(data: bytes) -> int:
    return struct.unpack("<q", data)[0]


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def index_path(shard: Path) -> Path:
    return shard.with_suffix(".idx")


def count_samples(shards: Iterable[Path]) -> int:
    """Samples in ``shards``, read from the header line of their DALI index files."""
    total = 0
    for shard in shards:
        with open(index_path(Path(shard))) as handle:
            total += int(handle.readline().split()[1])
    return total


@dataclass
class ShardInfo:
    name: str
    num_samples: int
    sha256: str


@dataclass
class _OpenShard:
    path: Path
    tmp_path: Path
    tar: tarfile.TarFile
    index_lines: list[str] = field(default_factory=list)


class ShardWriter:
    """Writes samples into ``shard-000000.tar …`` in ``out_dir``, capped by samples and bytes.

    A shard is closed before the sample that would exceed ``max_samples`` or push its members
    past ``max_bytes`` (only a single sample larger than the cap makes a bigger shard; tar's
    end-of-archive record padding, up to 10 KiB, comes on top). Sample indices continue from
    the shards before ``first_index``, counted from their DALI index files.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        max_samples: int = 10_000,
        max_bytes: int = 1 << 30,
        first_index: int = 0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.first_index = first_index  # resuming: shards before it are already written
        self.shards: list[ShardInfo] = []
        self.next_sample = count_samples(
            self.out_dir / shard_name(index) for index in range(first_index)
        )
        self._current: _OpenShard | None = None

    def write(self, sample: Sample) -> None:
        if "." in sample.key or "/" in sample.key:
            raise ValueError(f"sample key {sample.key!r} must not contain '.' or '/'")
        shard = self._current
        members = [
            (sample.ext, sample.image),
            (LABEL_EXT, encode_label(sample.label)),
            (INDEX_EXT, encode_index(self.next_sample)),
        ]
        needed = sum(_BLOCK + -(-len(payload) // _BLOCK) * _BLOCK for _, payload in members)
        if shard is not None and (
            len(shard.index_lines) >= self.max_samples or shard.tar.offset + needed > self.max_bytes
        ):
            self._close_current()
            shard = None
        if shard is None:
            shard = self._open_next()
        line = []
        for ext, payload in members:
            name = f"{sample.key}.{ext}"
            data_offset = self._add_member(shard.tar, name, payload)
            line.append(f"{ext} {data_offset} {len(payload)} {name}")
        shard.index_lines.append(" ".join(line))
        self.next_sample += 1

    def close(self) -> list[ShardInfo]:
        self._close_current()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._current is not None:
            self._current.tar.close()
            self._current.tmp_path.unlink(missing_ok=True)
            self._current = None

    @staticmethod
    def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
        # addfile leaves tar.offset after the data padded to whole blocks.
        padded = -(-len(payload) // _BLOCK) * _BLOCK
        return tar.offset - padded

    def _open_next(self) -> _OpenShard:
        path = self.out_dir / shard_name(self.first_index + len(self.shards))
        tmp_path = path.with_name(f".{path.name}.tmp")
        tar = tarfile.open(tmp_path, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in _close_current)
        self._current = _OpenShard(path=path, tmp_path=tmp_path, tar=tar)
        return self._current

    def _close_current(self) -> None:
        shard = self._current
        if shard is None:
            return
        shard.tar.close()
        index = index_path(shard.path)
        index_text = f"{DALI_INDEX_VERSION} {len(shard.index_lines)}\n"
        index_text += "".join(line + "\n" for line in shard.index_lines)
        _atomic_write_text(index, index_text)
        digest = _sha256(shard.tmp_path)
        os.replace(shard.tmp_path, shard.path)
        self.shards.append(ShardInfo(shard.path.name, len(shard.index_lines), digest))
        self._current = None


def list_shards(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("shard-*.tar"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
