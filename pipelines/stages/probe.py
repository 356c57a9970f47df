"""Probe stage: frozen-backbone evaluation — a linear classifier and a weighted kNN.

Only the config model lives here, so that validating a spec imports no torch, Ray or DALI;
``run`` calls ``pipelines/probe/run.py``. Features of the labelled train and evaluation
splits are extracted once with the deterministic ``eval`` view by ``num_workers`` Ray tasks
into float16 files (``pipelines/probe/features.py``); the probes
(``pipelines/probe/classifiers.py``) read them back in chunks. The evaluation split is the ingest
stage's ``val`` split, or the whole of a separately ingested labelled set named by ``test``. With
``random_init_baseline`` the same probes run on a randomly initialised backbone of the same
architecture.

``metrics.json`` holds ``top1`` (the linear probe's, the headline figure), ``top1_random_init``,
per probe kind its top-1/top-5 and per-class accuracy, and the extraction's throughput.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .base import MAX_BATCH, MAX_EPOCHS, MAX_LR, MAX_WORKERS, ShardReaderConfig


class ProbeConfig(ShardReaderConfig):
    gang: ClassVar[bool] = False  # extraction tasks, which queue: one must fit
    inputs: ClassVar[dict[str, str]] = {"model": "pretrain", "data": "ingest", "test": "ingest"}

    type: Literal["probe"]
    model: str = Field(description="name of the pretrain stage whose backbone is probed")
    data: str = Field(description="ingest stage whose train split trains the probes")
    test: str | None = Field(None, description="ingest stage to evaluate on; default: data's val")
    kinds: list[Literal["linear", "knn"]] = Field(["linear", "knn"], min_length=1)
    epochs: int = Field(100, gt=0, le=MAX_EPOCHS, description="linear classifier epochs")
    lr: float = Field(1e-3, gt=0, le=MAX_LR, description="linear classifier AdamW learning rate")
    weight_decay: float = Field(5e-4, ge=0, le=1)
    batch_size: int = Field(
        256, gt=0, le=MAX_BATCH, description="extraction and linear classifier batch"
    )
    knn_k: list[Annotated[int, Field(gt=0, le=10_000)]] = Field(
        [20, 200], min_length=1, description="neighbours (Wu et al. 2018)"
    )
    knn_temperature: float = Field(0.07, gt=0, le=10)
    random_init_baseline: bool = True
    n_last_blocks: int = Field(
        1,
        gt=0,
        description="ViT backbones: CLS tokens of the last n blocks concatenated (DINO's "
        "linear evaluation: 4 for ViT-S); 1 = the backbone's pooled CLS feature",
    )
    avgpool_patch_tokens: bool = Field(
        False,
        description="ViT backbones: and the mean patch token of the last block (DINO's "
        "evaluation of ViT-B, with n_last_blocks 1)",
    )
    num_workers: int = Field(
        1,
        gt=0,
        le=MAX_WORKERS,
        description="Ray tasks extracting features, each on a share of the shards",
    )
    use_gpu: bool = Field(
        False, description="one GPU per task: the loader, the backbones and the probes on it"
    )
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast on GPU")
    seed: int = Field(0, ge=0, lt=2**32)

    def metric_names(self) -> list[str]:
        """The numbers at the top of its ``metrics.json`` (what ``promote.metric`` can name)."""
        return ["top1", *(["top1_random_init"] if self.random_init_baseline else [])]
