"""Image sources for ingestion: each lists its items cheaply, then loads one item's bytes.

Listing first lets ingestion split train/val and fingerprint the source before any image
is read.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .samples import Sample
from .shards import IMAGE_EXTS


@dataclass(frozen=True)
class Item:
    key: str
    label: int
    locator: str


class Source(Protocol):
    classes: list[str]

    def items(self) -> list[Item]: ...

    def load(self, item: Item) -> Sample: ...

    def fingerprint(self) -> str: ...


def _key_for(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class ImageFolderSource:
    """``root/<class>/<image>`` (the ImageNet train layout); classes are the sorted folder names."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not self.classes:
            raise ValueError(f"image folder {self.root} has no class sub-folders")

    def items(self) -> list[Item]:
        items = []
        for label, name in enumerate(self.classes):
            for path in sorted((self.root / name).rglob("*")):
                relative = path.relative_to(self.root).as_posix()
                if path.is_file() and not any(p.startswith(".") for p in path.parts):
                    items.append(Item(_key_for(relative), label, relative))
        return items

    def load(self, item: Item) -> Sample:
        ext = Path(item.locator).suffix.lower().lstrip(".")
        data = (self.root / item.locator).read_bytes()
        if ext not in IMAGE_EXTS:
            raise ValueError(f"{item.locator}: unsupported image format {ext!r}")
        return Sample(item.key, data, "jpg" if ext == "jpeg" else ext, item.label)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for item in self.items():
            stat = (self.root / item.locator).stat()
            digest.update(f"{item.locator}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


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
