"""Ingest stage: a source of images → validated train/val WebDataset shards + manifest.

The same code as ``sslpipe ingest``: every source kind maps onto a ``sslpipe.datasets.sources``
class and the work is ``sslpipe.datasets.ingest.ingest``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sslpipe.datasets.ingest import ingest
from sslpipe.datasets.sources import (
    FileListSource,
    ImageFolderSource,
    Source,
    SyntheticShapesSource,
    TarSource,
)

from ..errors import UserError
from .base import StageConfig, StageContext


class SyntheticSource(BaseModel):
    """Generated labelled shapes (no download); the quickstart's data."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["synthetic"]
    num_images: int = Field(6000, gt=0)
    image_size: int = Field(64, ge=16)
    seed: int = 0

    def open(self) -> Source:
        return SyntheticShapesSource(self.num_images, image_size=self.image_size, seed=self.seed)


class ImageFolderSourceConfig(BaseModel):
    """``path/<class>/<image>`` on local or shared storage."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["image_folder"]
    path: str

    def open(self) -> Source:
        return ImageFolderSource(Path(self.path))


class UnlabelledFolderSourceConfig(BaseModel):
    """Every image below ``path`` (any layout), label −1."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["unlabelled_folder"]
    path: str

    def open(self) -> Source:
        return ImageFolderSource(Path(self.path), labelled=False)


class TarSourceConfig(BaseModel):
    """An uncompressed tar of an ImageFolder tree, or of per-class tars (ImageNet's train)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["tar"]
    path: str
    labelled: bool = True

    def open(self) -> Source:
        return TarSource(Path(self.path), labelled=self.labelled)


class FileListSourceConfig(BaseModel):
    """A CSV (``path,label``) or JSONL file list; relative paths are relative to the list."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["file_list"]
    path: str

    def open(self) -> Source:
        return FileListSource(Path(self.path))


SourceConfig = Annotated[
    SyntheticSource
    | ImageFolderSourceConfig
    | UnlabelledFolderSourceConfig
    | TarSourceConfig
    | FileListSourceConfig,
    Field(discriminator="kind"),
]


class IngestConfig(StageConfig):
    type: Literal["ingest"]
    source: SourceConfig
    shard_size: int = Field(10_000, gt=0, description="samples per shard")
    shard_bytes: int | None = Field(None, gt=0, description="bytes per shard (also caps)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="stratified validation split")
    split_seed: int = 0
    workers: int | None = Field(None, gt=0, description="validation processes (default: cores)")

    def source_fingerprint(self) -> str:
        return self.source.open().fingerprint()


def run(config: IngestConfig, ctx: StageContext) -> dict[str, Any]:
    try:
        source = config.source.open()
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"stage {config.name!r}: {error}") from None
    manifest = ingest(
        source,
        ctx.out_dir,
        shard_size=config.shard_size,
        shard_bytes=config.shard_bytes,
        val_fraction=config.val_fraction,
        seed=config.split_seed,
        workers=config.workers or os.cpu_count() or 1,
    )
    splits = manifest["splits"]
    return {name: split["num_samples"] for name, split in splits.items()} | {
        "rejected": manifest["num_rejected"]
    }
