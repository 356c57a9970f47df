"""Image sources for ingestion: each lists its items cheaply, then loads one item's bytes.

Listing first lets ingestion split train/val and fingerprint the source before any image
is read.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .samples import UNLABELLED, Sample


@dataclass(frozen=True)
class Item:
    """One listed input: a stable key, its label and where ``load`` finds its bytes."""

    key: str
    label: int
    locator: str


@dataclass(frozen=True)
class Rejection:
    """An input that is not ingested (``reason`` is one of ``validate.REASONS``)."""

    locator: str
    reason: str
    detail: str = ""


class Source(Protocol):
    """Lists its items cheaply, then loads one item's raw bytes (validated by ingestion).

    ``rejections`` holds what listing already refused (unsafe paths, missing files).
    """

    classes: list[str]
    rejections: list[Rejection]

    def items(self) -> list[Item]: ...

    def load(self, item: Item) -> Sample: ...

    def fingerprint(self) -> str: ...


def _key_for(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _is_hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _ext_of(locator: str) -> str:
    ext = PurePosixPath(locator).suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


class _Labeller:
    """Class of a relative path: its first folder below the common root (ImageFolder rule)."""

    def __init__(self, paths: list[str], labelled: bool) -> None:
        self.labelled = labelled
        folders = [p.split("/")[:-1] for p in paths]
        common = 0
        if folders:
            shortest = min(folders, key=len)
            while common < len(shortest) and all(f[common] == shortest[common] for f in folders):
                common += 1
            # The common prefix must stop above the class level when there are several classes.
            common = min(common, max(0, len(shortest) - 1)) if labelled else common
        self.depth = common
        self.classes = sorted({f[common] for f in folders if len(f) > common}) if labelled else []
        self._index = {name: index for index, name in enumerate(self.classes)}

    def label(self, path: str) -> int | None:
        """The label, or None for a labelled source's file outside any class folder."""
        if not self.labelled:
            return UNLABELLED
        folders = path.split("/")[:-1]
        return self._index[folders[self.depth]] if len(folders) > self.depth else None


def _label_items(
    paths: list[tuple[str, str]], labelled: bool, rejections: list[Rejection]
) -> tuple[list[str], list[Item]]:
    """Classes and items of ``(relative path, locator)`` pairs, sorted by path."""
    labeller = _Labeller([p for p, _ in paths], labelled)
    items = []
    for path, locator in sorted(paths):
        label = labeller.label(path)
        if label is None:
            rejections.append(Rejection(path, "no_class_folder", "file is not in a class folder"))
        else:
            items.append(Item(_key_for(path), label, locator))
    return labeller.classes, items


class ImageFolderSource:
    """``root/<class>/<image>`` (the ImageNet train layout); classes are the sorted folder names.

    With ``labelled=False`` every image below ``root`` is taken with label −1. Hidden files and
    folders are skipped. A symlink that resolves outside ``root`` is rejected as
    ``unsafe_path``; symlinked files inside it are read, symlinked folders are not descended
    into (they could loop).
    """

    def __init__(self, root: Path, *, labelled: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.labelled = labelled
        self.rejections: list[Rejection] = []
        self._resolved_root = self.root.resolve()
        self.classes, self._items = _label_items(
            [(p, p) for p in self._walk()], labelled, self.rejections
        )
        if labelled and not self.classes:
            raise ValueError(f"image folder {self.root} has no class sub-folders")

    def _walk(self) -> list[str]:
        found = []
        for directory, folders, files in os.walk(self.root):
            relative_dir = Path(directory).relative_to(self.root).as_posix()
            prefix = "" if relative_dir == "." else relative_dir + "/"
            for name in sorted(folders):
                path = Path(directory, name)
                if name.startswith(".") or (path.is_symlink() and not self._inside(path)):
                    if not name.startswith("."):
                        self.rejections.append(
                            Rejection(prefix + name, "unsafe_path", "symlink leaves the root")
                        )
                    folders.remove(name)
            for name in files:
                path = Path(directory, name)
                if name.startswith("."):
                    continue
                if path.is_symlink() and not self._inside(path):
                    self.rejections.append(
                        Rejection(prefix + name, "unsafe_path", "symlink leaves the root")
                    )
                    continue
                found.append(prefix + name)
        return found

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self._resolved_root)

    def items(self) -> list[Item]:
        return list(self._items)

    def load(self, item: Item) -> Sample:
        data = (self.root / item.locator).read_bytes()
        return Sample(item.key, data, _ext_of(item.locator), item.label)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"folder:{self.labelled}\n".encode())
        for item in self._items:
            stat = (self.root / item.locator).stat()
            digest.update(f"{item.locator}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _file_fingerprint(kind: str, path: Path, extra: str = "") -> str:
    stat = path.stat()
    text = f"{kind}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{extra}"
    return hashlib.sha256(text.encode()).hexdigest()


class TarSource:
    """An uncompressed tar of an ImageFolder tree, read in place without extracting it.

    Members that are themselves ``.tar`` files are opened as nested archives (ImageNet's train
    archive holds one tar per class): an image's path is the inner tar's name without ``.tar``
    followed by its inner path, so ``n01440764.tar:x.JPEG`` is class ``n01440764``. Listing reads
    only the tar headers; ``load`` reads one member's bytes at its recorded offset, so worker
    processes can read in parallel. Members with absolute paths or ``..`` are rejected as
    ``unsafe_path``; links, devices and hidden members are skipped.
    """

    def __init__(self, path: Path, *, labelled: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tar archive {self.path} does not exist")
        with open(self.path, "rb") as handle:
            magic = handle.read(6)
        if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
            raise ValueError(
                f"{self.path} is compressed; decompress it first (images are read in place "
                "at their offsets, which needs an uncompressed tar)"
            )
        self.labelled = labelled
        self.rejections: list[Rejection] = []
        try:
            with tarfile.open(self.path, "r:") as archive:
                paths = self._list(archive, prefix="", base=0)
        except tarfile.TarError as error:
            raise ValueError(f"{self.path} is not a readable tar archive: {error}") from None
        self.classes, self._items = _label_items(paths, labelled, self.rejections)
        if labelled and not self.classes:
            raise ValueError(f"tar archive {self.path} has no class folders")
        self._handle: BinaryIO | None = None

    def _list(self, archive: tarfile.TarFile, prefix: str, base: int) -> list[tuple[str, str]]:
        paths = []
        for member in archive:
            name = prefix + member.name
            parts = PurePosixPath(member.name).parts
            if member.name.startswith("/") or ".." in parts:
                self.rejections.append(Rejection(name, "unsafe_path", "absolute path or '..'"))
                continue
            relative = "/".join(p for p in parts if p != ".")
            if not member.isfile() or _is_hidden(relative):
                continue
            offset = base + member.offset_data
            if relative.lower().endswith(".tar"):
                inner = archive.extractfile(member)
                assert inner is not None
                with tarfile.open(fileobj=inner, mode="r:") as nested:
                    paths += self._list(nested, prefix + relative[: -len(".tar")] + "/", offset)
                continue
            path = prefix + relative
            paths.append((path, f"{offset}:{member.size}:{path}"))
        return paths

    def items(self) -> list[Item]:
        return list(self._items)

    def load(self, item: Item) -> Sample:
        offset, size, path = item.locator.split(":", 2)
        if self._handle is None:
            self._handle = open(self.path, "rb")  # noqa: SIM115 (lives as long as the source)
        self._handle.seek(int(offset))
        return Sample(item.key, self._handle.read(int(size)), _ext_of(path), item.label)

    def fingerprint(self) -> str:
        return _file_fingerprint("tar", self.path, str(self.labelled))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}


class FileListSource:
    """A CSV (``path,label`` header) or JSONL (``{"path": ..., "label": ...}``) list of files.

    Relative paths are relative to the list's folder. Labels are class names or integers (all
    integers: the label is the number and the class names are its decimal form); an empty or
    missing label is −1. Missing files are rejected as ``missing``, repeated paths as
    ``duplicate``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"file list {self.path} does not exist")
        self.rejections: list[Rejection] = []
        rows = self._rows()
        names = sorted({label for _, label in rows if label != ""})
        if all(_is_int(name) for name in names):
            numbers = sorted(int(name) for name in names)
            self.classes = [str(n) for n in range(numbers[-1] + 1)] if numbers else []
            label_of = {name: int(name) for name in names}
        else:
            self.classes = names
            label_of = {name: index for index, name in enumerate(names)}
        label_of[""] = UNLABELLED
        seen: set[str] = set()
        self._items = []
        for entry, label in rows:
            if entry in seen:
                self.rejections.append(Rejection(entry, "duplicate", "listed more than once"))
                continue
            seen.add(entry)
            if not self._resolve(entry).is_file():
                self.rejections.append(Rejection(entry, "missing", "no such file"))
                continue
            self._items.append(Item(_key_for(entry), label_of[label], entry))
        self._items.sort(key=lambda item: item.key)

    def _rows(self) -> list[tuple[str, str]]:
        text = self.path.read_text(encoding="utf-8")
        if self.path.suffix.lower() in (".jsonl", ".ndjson"):
            records = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{self.path}:{number}: invalid JSON: {error}") from None
        else:
            records = list(csv.DictReader(io.StringIO(text)))
        rows = []
        for number, record in enumerate(records, 1):
            if not isinstance(record, dict) or not record.get("path"):
                raise ValueError(f"{self.path}: entry {number} has no 'path'")
            label = record.get("label")
            rows.append((str(record["path"]), "" if label is None else str(label).strip()))
        return rows

    def _resolve(self, entry: str) -> Path:
        return self.path.parent / entry

    def items(self) -> list[Item]:
        return list(self._items)

    def load(self, item: Item) -> Sample:
        data = self._resolve(item.locator).read_bytes()
        return Sample(item.key, data, _ext_of(item.locator), item.label)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.path.read_bytes())
        for item in self._items:
            stat = self._resolve(item.locator).stat()
            digest.update(f"{item.locator}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def open_source(path: Path, *, labelled: bool = True) -> Source:
    """The source for ``path``: a folder, a tar archive or a ``.csv``/``.jsonl`` file list."""
    path = Path(path)
    if path.is_dir():
        return ImageFolderSource(path, labelled=labelled)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        return FileListSource(path)
    if path.suffix.lower() == ".tar" or tarfile.is_tarfile(path):
        return TarSource(path, labelled=labelled)
    raise ValueError(f"{path}: not a folder, a .tar archive or a .csv/.jsonl file list")


SHAPES = (
    "disc",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "stripes",
    "checker",
    "diamond",
    "crescent",
)


class SyntheticShapesSource:
    """Deterministic labelled shapes: one class per shape, everything else is nuisance.

    Colour, position, scale, rotation, background colour and clutter are random, so a
    representation must become invariant to them (what the augmentations teach) to separate
    the classes. Image ``i`` depends only on ``(seed, i)``.
    """

    def __init__(
        self, num_images: int, *, image_size: int = 64, seed: int = 0, quality: int = 90
    ) -> None:
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.quality = quality
        self.classes = list(SHAPES)
        self.rejections: list[Rejection] = []

    def items(self) -> list[Item]:
        return [
            Item(f"syn{index:07d}", index % len(SHAPES), str(index))
            for index in range(self.num_images)
        ]

    def load(self, item: Item) -> Sample:
        rng = np.random.default_rng([self.seed, int(item.locator)])
        image = _draw_shape(SHAPES[item.label], self.image_size, rng)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.quality)
        return Sample(item.key, buffer.getvalue(), "jpg", item.label)

    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"synthetic:{self.num_images}:{self.image_size}:{self.seed}:{self.quality}".encode()
        ).hexdigest()


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _polygon(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    step = 2 * math.pi / len(radii)
    return [
        (cx + r * math.cos(angle + k * step), cy + r * math.sin(angle + k * step))
        for k, r in enumerate(radii)
    ]


def _contrasting_colour(
    rng: np.random.Generator, other: tuple[int, int, int]
) -> tuple[int, int, int]:
    """A random colour far enough from ``other`` that the shape never vanishes."""
    while True:
        colour = _colour(rng)
        if sum((a - b) ** 2 for a, b in zip(colour, other, strict=True)) > 120**2:
            return colour


def _draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    background = _colour(rng)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 5))):  # clutter: thin random lines
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        draw.line((x0, y0, x1, y1), fill=_colour(rng), width=1)
    fill = _contrasting_colour(rng, background)
    r = float(rng.uniform(0.25, 0.42)) * size
    cx, cy = (float(v) for v in rng.uniform(r, size - r, size=2))
    angle = float(rng.uniform(0, 2 * math.pi))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, [r] * 4, angle), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, [r, r * 0.55] * 2, angle), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r] * 3, angle), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r, r * 0.4] * 5, angle), fill=fill)
    elif shape == "cross":
        width = max(2, int(r / 2.5))
        for a in (angle, angle + math.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=width)
    elif shape == "crescent":
        draw.ellipse(box, fill=fill)
        shift = r * 0.6
        sx, sy = cx + shift * math.cos(angle), cy + shift * math.sin(angle)
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=background)
    elif shape in ("stripes", "checker"):
        period = max(3.0, r / 2)
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
        u = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) // period
        v = (-(xs - cx) * math.sin(angle) + (ys - cy) * math.cos(angle)) // period
        pattern = u % 2 == 0 if shape == "stripes" else (u + v) % 2 == 0
        inside = (np.abs(xs - cx) < r) & (np.abs(ys - cy) < r)
        mask = Image.fromarray(((pattern & inside) * 255).astype(np.uint8))
        image.paste(fill, (0, 0, size, size), mask)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image.filter(ImageFilter.GaussianBlur(0.5))
