"""Which filesystem a path is on, from the mount table: memory-mapped shard reads suit local
disks, while on a network filesystem every page fault is a network round trip (and pages may be
evicted under memory pressure), so the loaders read there with plain ``read`` calls.

Linux only (``/proc/mounts``); elsewhere no path counts as networked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MOUNTS = Path("/proc/mounts")
# Mount types (``/proc/mounts``' third field) of network and cluster filesystems; every FUSE
# filesystem ("fuse", "fuseblk", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse" ...) counts too.
NETWORK_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "cifs",
        "smb3",
        "smbfs",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "9p",
        "afs",
        "orangefs",
        "wekafs",
    }
)


def _unescape(field: str) -> str:
    """A mount table field with its octal escapes (``\\040`` = space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def parse_mounts(table: str) -> list[tuple[str, str]]:
    """``(mount point, type)`` for each line of a ``/proc/mounts``-format table."""
    mounts = []
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append((_unescape(fields[1]), fields[2]))
    return mounts


def filesystem_type(path: str | os.PathLike[str], mounts: list[tuple[str, str]]) -> str | None:
    """The type of the mount that holds ``path`` (symlinks resolved): the longest mount point
    that contains it, the last mounted where one is mounted over another; None if none does."""
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for point, kind in mounts:
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):
            best = (len(point), kind)
    return None if best is None else best[1]


def is_network_type(kind: str | None) -> bool:
    return kind is not None and (kind in NETWORK_TYPES or kind.split(".")[0] in {"fuse", "fuseblk"})


def on_network_filesystem(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is on a network or FUSE filesystem, by this machine's mount table."""
    try:
        table = MOUNTS.read_text()
    except OSError:
        return False
    return is_network_type(filesystem_type(path, parse_mounts(table)))
