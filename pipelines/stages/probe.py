"""Probe stage: a linear classifier on frozen backbone features, against a random-init baseline.

Features of the ingest stage's train and val splits are extracted once with the deterministic
``eval`` view through DALI; the classifier is trained on train features and scored on val.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from sslpipe.datasets.dali_views import LoaderConfig, ViewLoader
from sslpipe.datasets.ingest import read_manifest, split_shards
from sslpipe.datasets.recipes import ViewRecipe, get_recipe

from ..model_io import build_described_backbone, load_backbone
from .base import StageConfig, StageContext


class ProbeConfig(StageConfig):
    inputs: ClassVar[dict[str, str]] = {"model": "pretrain", "data": "ingest"}

    type: Literal["probe"]
    model: str = Field(description="name of the pretrain stage whose backbone is probed")
    data: str = Field(description="name of the ingest stage with labelled train/val splits")
    epochs: int = Field(100, gt=0, description="linear classifier epochs")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, gt=0)
    random_init_baseline: bool = True
    dali_threads: int = Field(2, gt=0)
    seed: int = 0


@torch.no_grad()
def extract_features(
    backbone: nn.Module, shards: list[Path], recipe: ViewRecipe, *, batch_size: int, threads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of ``shards`` exactly once: features and labels."""
    loader = ViewLoader(
        shards,
        [recipe],
        LoaderConfig(batch_size=batch_size, shuffle=False, drop_last=False, num_threads=threads),
    )
    features, labels = [], []
    for (view,), label in loader:
        features.append(backbone(view.cpu()))
        labels.append(label.cpu())
    return torch.cat(features), torch.cat(labels)


def train_linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    config: ProbeConfig,
) -> dict[str, Any]:
    """Standardised features → linear layer (AdamW, cosine lr); top-1 and per-class accuracy."""
    generator = torch.Generator().manual_seed(config.seed)
    mean, std = train[0].mean(dim=0), train[0].std(dim=0) + 1e-6
    x_train, x_val = (train[0] - mean) / std, (val[0] - mean) / std
    classifier = nn.Linear(x_train.shape[1], num_classes)
    optimizer = torch.optim.AdamW(
        classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    for _ in range(config.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for batch in order.split(config.batch_size):
            loss = F.cross_entropy(classifier(x_train[batch]), train[1][batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    with torch.no_grad():
        predicted = classifier(x_val).argmax(dim=1)
    correct = predicted == val[1]
    per_class = [
        float(correct[val[1] == c].float().mean()) if (val[1] == c).any() else None
        for c in range(num_classes)
    ]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((val[1], predicted), torch.ones_like(predicted), accumulate=True)
    return {
        "top1": 100.0 * float(correct.float().mean()),
        "per_class_top1": per_class,
        "confusion": confusion.tolist(),
    }


def _probe(backbone: nn.Module, data_dir: Path, recipe: ViewRecipe, config: ProbeConfig):
    features = {
        split: extract_features(
            backbone,
            split_shards(data_dir, split),
            recipe,
            batch_size=config.batch_size,
            threads=config.dali_threads,
        )
        for split in ("train", "val")
    }
    num_classes = read_manifest(data_dir)["num_classes"]
    return train_linear_probe(features["train"], features["val"], num_classes, config)


def run(config: ProbeConfig, ctx: StageContext) -> dict[str, Any]:
    data_dir = ctx.inputs["data"]
    if read_manifest(data_dir)["splits"]["val"]["num_samples"] == 0:
        raise ValueError(f"stage {config.data!r} has an empty val split: set val_fraction > 0")
    backbone, description = load_backbone(ctx.inputs["model"])
    recipe = get_recipe("eval")[0].model_copy(
        update={
            "size": description["input_size"],
            "center_crop_fraction": 1.0,
            "mean": tuple(description["mean"]),
            "std": tuple(description["std"]),
        }
    )
    result = _probe(backbone, data_dir, recipe, config)
    metrics: dict[str, Any] = {"top1": result["top1"], "per_class_top1": result["per_class_top1"]}
    if config.random_init_baseline:
        torch.manual_seed(config.seed)
        baseline = build_described_backbone(description).eval()
        metrics["top1_random_init"] = _probe(baseline, data_dir, recipe, config)["top1"]
    (ctx.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (ctx.out_dir / "confusion.json").write_text(json.dumps(result["confusion"]) + "\n")
    return {k: v for k, v in metrics.items() if isinstance(v, float)}
