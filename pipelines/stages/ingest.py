"""Ingest stage: a source of images → train/val WebDataset shards + manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sslpipe.datasets.ingest import ingest
from sslpipe.datasets.sources import ImageFolderSource, Source, SyntheticShapesSource

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


SourceConfig = Annotated[SyntheticSource | ImageFolderSourceConfig, Field(discriminator="kind")]


class IngestConfig(StageConfig):
    type: Literal["ingest"]
    source: SourceConfig
    shard_size: int = Field(10_000, gt=0, description="samples per shard")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="stratified validation split")
    split_seed: int = 0

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
        val_fraction=config.val_fraction,
        seed=config.split_seed,
    )
    splits = manifest["splits"]
    return {name: split["num_samples"] for name, split in splits.items()}
