"""Input checks for ingestion: every file is decoded once before it is written to a shard.

``check_image`` returns the bytes to store and their extension, or raises ``Rejected`` with one
of ``REASONS``. Formats DALI decodes (JPEG, PNG, BMP, TIFF, WebP, JPEG 2000, PNM) are kept
byte for byte under the extension of their *detected* format (a PNG named ``.jpg`` is stored
as ``.png``); a few formats DALI cannot decode (GIF, TGA, ICO, CMYK TIFF) are re-encoded to
PNG; everything else is rejected. Grayscale, CMYK, alpha and 16-bit images are accepted: DALI
decodes them to 3-channel RGB (``output_type=RGB``).

JPEGs are validated with libjpeg's DCT scaling (``Image.draft`` at 1/8 size): every entropy
coded segment is still read, so truncation and corruption are detected, at about a third of
the cost of a full decode.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

REASONS = (
    "empty",
    "not_an_image",
    "unsupported_format",
    "truncated_or_corrupt",
    "decompression_bomb",
    "unsafe_path",
    "missing",
    "duplicate",
    "no_class_folder",
)
# PIL's own default limit (about 89.5 megapixels): ~4× a 24-megapixel camera photo.
DEFAULT_MAX_PIXELS = 89_478_485

# PIL format name → extension DALI decodes.
NATIVE_FORMATS = {
    "JPEG": "jpg",
    "MPO": "jpg",  # multi-picture JPEG from phone cameras: DALI decodes the first frame
    "PNG": "png",
    "BMP": "bmp",
    "TIFF": "tiff",
    "WEBP": "webp",
    "JPEG2000": "jp2",
    "PPM": "ppm",
}
REENCODED_FORMATS = ("GIF", "TGA", "ICO")


class Rejected(Exception):
    """An input that is not written, with a machine-readable reason and a human detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def check_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, str]:
    """``(bytes to store, extension)`` for a valid image; raises ``Rejected`` otherwise."""
    if not data:
        raise Rejected("empty", "zero-byte file")
    with warnings.catch_warnings():
        # We enforce our own pixel limit below; PIL's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise Rejected("decompression_bomb", str(error)) from None
        except UnidentifiedImageError:  # its message names a BytesIO object's address
            raise Rejected("not_an_image", "not a format Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise Rejected("not_an_image", str(error) or type(error).__name__) from None
        fmt = image.format or "?"
        if fmt not in NATIVE_FORMATS and fmt not in REENCODED_FORMATS:
            raise Rejected("unsupported_format", f"{fmt} images are not supported")
        width, height = image.size
        if width * height > max_pixels:
            raise Rejected(
                "decompression_bomb", f"{width}×{height} pixels exceeds the {max_pixels} limit"
            )
        if width == 0 or height == 0:
            raise Rejected("not_an_image", f"{width}×{height} image")
        if fmt == "JPEG":
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        try:
            image.load()
        except Exception as error:  # PIL's decoders raise many types for bad data
            raise Rejected("truncated_or_corrupt", str(error) or type(error).__name__) from None
    if fmt in REENCODED_FORMATS or (fmt == "TIFF" and image.mode == "CMYK"):
        return _to_png(image), "png"
    return data, NATIVE_FORMATS[fmt]


def _to_png(image: Image.Image) -> bytes:
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    # Fixed settings and no metadata: the same input gives the same bytes.
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
