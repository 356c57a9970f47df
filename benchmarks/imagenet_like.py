"""ImageNet-size test images (~500×375 JPEG) cut from scikit-image's bundled photographs.

Needs ``scikit-image`` (the optional ``bench`` dependency). Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat")


def _photos() -> list[Image.Image]:
    import skimage.data

    return [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]


def write_image_folder(root: Path, num_images: int, *, classes: int = 10, seed: int = 0) -> Path:
    """``root/c<k>/<i>.jpg``: random crops (40–100% area) resized to 500×375 or 375×500."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    for index in range(num_images):
        photo = photos[int(rng.integers(len(photos)))]
        width, height = photo.size
        scale = float(np.sqrt(rng.uniform(0.4, 1.0)))
        cw, ch = int(width * scale), int(height * scale)
        x, y = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
        size = (500, 375) if rng.random() < 0.75 else (375, 500)
        image = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = root / f"c{index % classes}" / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="JPEG", quality=90)
    return root
