"""Ingest stage: a source of images → validated train/val WebDataset shards + manifest.

The same code as ``sslpipe ingest``: every source kind maps onto a ``sslpipe.datasets.sources``
class and the work is ``sslpipe.datasets.ingest.ingest``. Both are imported when the stage
opens its source, so that reading and validating a spec stays light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sslpipe.datasets.recipes import MAX_SIDE
from sslpipe.datasets.shards import IMAGE_EXTS

from ..errors import SPEC_EXIT, UserError
from ..run.outputs import REJECTED
from ..spec.compose import RELATIVE_PATHS
from .base import MAX_WORKERS, MachineProblem, StageConfig, StageContext

if TYPE_CHECKING:
    from sslpipe.datasets.sources import Source

_IMAGE_SUFFIXES = {f".{ext}" for ext in IMAGE_EXTS} | {".gif"}
_IMAGENET_VAL = "ILSVRC2012_val_"
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"(\xb5/\xfd": "zstd"}
_PATH = ("source", "path")


def _compression(path: Path) -> str | None:
    with open(path, "rb") as handle:
        magic = handle.read(6)
    return next((name for m, name in _COMPRESSED.items() if magic.startswith(m)), None)


def _path_problems(path: Path, kind: str) -> list[MachineProblem]:
    """Whether ``path`` exists and is what ``kind`` reads, with the kind that would read it."""

    def wrong(message: str) -> list[MachineProblem]:
        return [MachineProblem(_PATH, f"{path} {message}", SPEC_EXIT)]

    if not path.exists():
        relative = "" if path.is_absolute() else f" ({RELATIVE_PATHS})"
        return [MachineProblem(_PATH, f"{path} does not exist{relative}")]
    folder_kind = kind in ("image_folder", "unlabelled_folder")
    if path.is_dir():
        return [] if folder_kind else wrong("is a folder: use kind: image_folder (a sub-folder "
                                            "per class) or kind: unlabelled_folder")  # fmt: skip
    if compression := _compression(path):
        return wrong(f"is {compression}-compressed: decompress it and use kind: tar on the "
                     ".tar (images are read in place, at their offsets)")  # fmt: skip
    suffix = path.suffix.lower()
    suggested = {".tar": "tar", ".csv": "file_list", ".jsonl": "file_list"}.get(suffix)
    if suggested and suggested != kind:
        return wrong(f"is a {'tar archive' if suggested == 'tar' else 'file list'}: use "
                     f"kind: {suggested}")  # fmt: skip
    return wrong("is a file, not a folder") if folder_kind else []


class SyntheticSource(BaseModel):
    """Generated labelled shapes (no download); the quickstart's data."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["synthetic"]
    num_images: int = Field(6000, gt=0, le=10**8, description="images to generate")
    image_size: int = Field(64, ge=16, le=MAX_SIDE, description="side of the square images, pixels")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the generator")

    def open(self) -> Source:
        from sslpipe.datasets.sources import SyntheticShapesSource

        return SyntheticShapesSource(self.num_images, image_size=self.image_size, seed=self.seed)

    def machine_problems(self) -> list[MachineProblem]:
        return []


class ImageFolderSourceConfig(BaseModel):
    """``path/<class>/<image>`` on local or shared storage (the ImageNet train layout)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["image_folder"]
    path: str = Field(description="the folder holding one sub-folder per class")

    def open(self) -> Source:
        from sslpipe.datasets.sources import ImageFolderSource

        return ImageFolderSource(Path(self.path))

    def machine_problems(self) -> list[MachineProblem]:
        path = Path(self.path)
        if problems := _path_problems(path, self.kind):
            return problems
        folders, images = False, []
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                folders = folders or entry.is_dir()
                if Path(entry.name).suffix.lower() in _IMAGE_SUFFIXES:
                    images.append(entry.name)
        if folders:
            return []
        if not images:
            return [MachineProblem(_PATH, f"{path} is empty: no class folders, no images")]
        if any(name.startswith(_IMAGENET_VAL) for name in images[:10]):
            message = (
                f"{path} is ImageNet's flat val folder (no class folders): label it with a "
                "file list, kind: file_list with a CSV of path,label made from "
                "LOC_val_solution.csv (README: 'ImageNet from its official archives')"
            )
        else:
            message = (
                f"{path} holds images but no class folders: use kind: unlabelled_folder for "
                "images without labels, or put each class in its own sub-folder"
            )
        return [MachineProblem(_PATH, message, SPEC_EXIT)]


class UnlabelledFolderSourceConfig(BaseModel):
    """Every image below ``path`` (any layout), label −1."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["unlabelled_folder"]
    path: str = Field(description="the folder; every image below it, in any layout")

    def open(self) -> Source:
        from sslpipe.datasets.sources import ImageFolderSource

        return ImageFolderSource(Path(self.path), labelled=False)

    def machine_problems(self) -> list[MachineProblem]:
        return _path_problems(Path(self.path), self.kind)


class TarSourceConfig(BaseModel):
    """An uncompressed tar of an ImageFolder tree, or of per-class tars (ImageNet's train)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["tar"]
    path: str = Field(description="the .tar file, read in place (not extracted)")
    labelled: bool = Field(True, description="labels from the class folders inside the tar")

    def open(self) -> Source:
        from sslpipe.datasets.sources import TarSource

        return TarSource(Path(self.path), labelled=self.labelled)

    def machine_problems(self) -> list[MachineProblem]:
        return _path_problems(Path(self.path), self.kind)


class FileListSourceConfig(BaseModel):
    """A CSV (``path,label``) or JSONL file list; relative paths are relative to the list."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["file_list"]
    path: str = Field(description="the .csv (path,label header) or .jsonl list")

    def open(self) -> Source:
        from sslpipe.datasets.sources import FileListSource

        return FileListSource(Path(self.path))

    def machine_problems(self) -> list[MachineProblem]:
        return _path_problems(Path(self.path), self.kind)


SourceConfig = Annotated[
    SyntheticSource
    | ImageFolderSourceConfig
    | UnlabelledFolderSourceConfig
    | TarSourceConfig
    | FileListSourceConfig,
    Field(discriminator="kind"),
]


def shard_caps(shard_size: int | str, shard_bytes: int | str | None) -> tuple[int, int | None]:
    """``(samples, bytes)`` per shard from a count or a size with units (``512MB``, ``1GiB``),
    read as ``sslpipe ingest --shard-size`` reads them."""
    from sslpipe.datasets.layout import parse_shard_size

    samples, size_cap = parse_shard_size(str(shard_size))
    if shard_bytes is not None:
        byte_cap = parse_shard_size(str(shard_bytes))[1] or int(shard_bytes)
        size_cap = min(size_cap, byte_cap) if size_cap else byte_cap
    return samples, size_cap


class IngestConfig(StageConfig):
    """Images from ``source`` → validated train/val WebDataset shards, a DALI index per shard,
    ``manifest.json`` and ``rejected.jsonl`` (every refused input with its reason)."""

    resumable: ClassVar[bool] = True  # the shards its journal lists are not written again

    type: Literal["ingest"]
    source: SourceConfig = Field(description="where the images come from; `kind` says how")
    shard_size: int | str = Field(
        10_000, description="samples per shard (10000), or bytes per shard with units (512MB)"
    )
    shard_bytes: int | str | None = Field(
        None, description="bytes per shard with units (512MB, 1GiB); caps with shard_size"
    )
    val_fraction: float = Field(0.1, ge=0, lt=1, description="stratified validation split")
    split_seed: int = Field(0, ge=0, lt=2**32, description="seed of the train/val split")
    workers: int | None = Field(
        None, gt=0, le=MAX_WORKERS, description="validation processes (default: cores)"
    )

    @field_validator("shard_size", "shard_bytes", mode="before")
    @classmethod
    def _size_with_units(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            if int(value) <= 0:
                raise ValueError(f"must be greater than 0, got {value!r}")
            return int(value)
        if not isinstance(value, str):
            raise ValueError(f"expected a count or a size like 512MB, got {value!r}")
        try:
            shard_caps(value, None)
        except ValueError as error:
            raise ValueError(str(error).removeprefix("shard size ")) from None
        return value.strip()

    def source_fingerprint(self) -> str:
        return self.source.open().fingerprint()

    def machine_problems(self) -> list[MachineProblem]:
        return self.source.machine_problems()

    @classmethod
    def notes(cls, metrics: dict[str, Any], stage_dir: Path) -> list[str]:
        rejected = metrics.get("rejected", 0)
        if not rejected:
            return []
        return [f"{rejected} input(s) rejected; reasons in {stage_dir / REJECTED}"]


def run(config: IngestConfig, ctx: StageContext) -> dict[str, Any]:
    from sslpipe.datasets.ingest import ingest

    try:
        source = config.source.open()
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"stage {config.name!r}: {error}") from None
    samples, size_cap = shard_caps(config.shard_size, config.shard_bytes)
    manifest = ingest(
        source,
        ctx.out_dir,
        shard_size=samples,
        shard_bytes=size_cap,
        val_fraction=config.val_fraction,
        seed=config.split_seed,
        workers=config.workers or os.cpu_count() or 1,
    )
    splits = manifest["splits"]
    return {name: split["num_samples"] for name, split in splits.items()} | {
        "rejected": manifest["num_rejected"]
    }
