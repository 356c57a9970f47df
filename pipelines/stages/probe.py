"""Probe stage: frozen-backbone evaluation — a linear classifier and a weighted kNN.

Features of the labelled train and evaluation splits are extracted once with the deterministic
``eval`` view through DALI. The evaluation split is the ingest stage's ``val`` split, or the
whole of a separately ingested labelled set named by ``test``. With ``random_init_baseline``
the same probes run on a randomly initialised backbone of the same architecture.

Extraction runs as ``num_workers`` Ray tasks (``ensure_ray``: in-process Ray or the cluster
of ``RAY_ADDRESS``): each takes a contiguous share of every split's shards and reads it once
for both backbones; the driver concatenates the shares in shard order, so the features, and
the probes trained on them, do not depend on ``num_workers``.

``metrics.json`` holds ``top1`` (the linear probe's, the headline figure), ``top1_random_init``,
and per probe kind its top-1/top-5 and per-class accuracy.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import ray
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from sslpipe.datasets.dali_views import LoaderConfig, ViewLoader
from sslpipe.datasets.ingest import read_manifest, split_shards
from sslpipe.datasets.recipes import ViewRecipe, apply_overrides, get_recipe

from ..errors import UserError
from ..model_io import build_described_backbone, load_backbone
from ..ray_runtime import ensure_ray
from .base import StageConfig, StageContext

Features = tuple[torch.Tensor, torch.Tensor]


class ProbeConfig(StageConfig):
    inputs: ClassVar[dict[str, str]] = {"model": "pretrain", "data": "ingest", "test": "ingest"}

    type: Literal["probe"]
    model: str = Field(description="name of the pretrain stage whose backbone is probed")
    data: str = Field(description="ingest stage whose train split trains the probes")
    test: str | None = Field(None, description="ingest stage to evaluate on; default: data's val")
    kinds: list[Literal["linear", "knn"]] = Field(["linear", "knn"], min_length=1)
    epochs: int = Field(100, gt=0, description="linear classifier epochs")
    lr: float = Field(1e-3, gt=0, description="linear classifier AdamW learning rate")
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(256, gt=0)
    knn_k: list[int] = Field([20, 200], min_length=1, description="neighbours (Wu et al. 2018)")
    knn_temperature: float = Field(0.07, gt=0)
    random_init_baseline: bool = True
    num_workers: int = Field(
        1, gt=0, description="Ray tasks extracting features, each on a share of the shards"
    )
    use_gpu: bool = Field(False, description="one GPU per worker: DALI and the backbones on it")
    dali_threads: int = Field(2, gt=0, description="DALI threads, and CPUs, per worker")
    seed: int = 0


@torch.no_grad()
def extract_features(
    backbones: list[nn.Module],
    shards: list[Path],
    recipe: ViewRecipe,
    *,
    batch_size: int,
    threads: int,
    use_gpu: bool = False,
) -> list[Features]:
    """Every sample of ``shards`` exactly once, in shard order, decoded once: each backbone's
    features and the labels (on the CPU)."""
    loader = ViewLoader(
        shards,
        [recipe],
        LoaderConfig(
            batch_size=batch_size,
            shuffle=False,
            drop_last=False,
            num_threads=threads,
            device="gpu" if use_gpu else "cpu",
        ),
    )
    device = loader.device or torch.device("cpu")
    backbones = [backbone.to(device) for backbone in backbones]
    features: list[list[torch.Tensor]] = [[] for _ in backbones]
    labels = []
    for (view,), label in loader:
        for collected, backbone in zip(features, backbones, strict=True):
            collected.append(backbone(view.to(device)).cpu())
        labels.append(label.cpu())
    all_labels = torch.cat(labels)
    return [(torch.cat(collected), all_labels) for collected in features]


def shares(shards: list[Path], num_workers: int) -> list[list[Path]]:
    """``shards`` cut into ``num_workers`` contiguous runs of near-equal length (some empty
    when there are fewer shards than workers); concatenated they are ``shards`` again."""
    size, extra = divmod(len(shards), num_workers)
    bounds = [i * size + min(i, extra) for i in range(num_workers + 1)]
    return [shards[a:b] for a, b in itertools.pairwise(bounds)]


def _extract_share(
    backbones: list[nn.Module],
    share: dict[str, list[Path]],
    recipe: ViewRecipe,
    config: ProbeConfig,
) -> dict[str, list[Features]]:
    """One Ray worker's part: the features of its share of every split."""
    return {
        name: extract_features(
            backbones,
            shards,
            recipe,
            batch_size=config.batch_size,
            threads=config.dali_threads,
            use_gpu=config.use_gpu,
        )
        for name, shards in share.items()
        if shards
    }


def extract_splits(
    backbones: list[nn.Module],
    splits: dict[str, list[Path]],
    recipe: ViewRecipe,
    config: ProbeConfig,
) -> dict[str, list[Features]]:
    """Per split, each backbone's features of every sample, extracted by ``num_workers`` Ray
    tasks on contiguous shard shares and concatenated in shard order."""
    ensure_ray()
    task = ray.remote(num_cpus=config.dali_threads, num_gpus=int(config.use_gpu))(_extract_share)
    models = ray.put(backbones)
    cut = {name: shares(shards, config.num_workers) for name, shards in splits.items()}
    parts = ray.get(
        [
            task.remote(models, {name: cut[name][i] for name in splits}, recipe, config)
            for i in range(config.num_workers)
        ]
    )
    return {name: _concat([part[name] for part in parts if name in part]) for name in splits}


def _concat(parts: list[list[Features]]) -> list[Features]:
    """Per backbone, the workers' features and labels joined in worker order."""
    return [
        (torch.cat([part[b][0] for part in parts]), torch.cat([part[b][1] for part in parts]))
        for b in range(len(parts[0]))
    ]


def accuracy(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5 (with at least 5 classes), per-class top-1 and the confusion matrix."""
    predicted = scores.argmax(dim=1)
    correct = predicted == labels
    result: dict[str, Any] = {"top1": 100.0 * float(correct.float().mean())}
    if num_classes >= 5:
        top5 = (scores.topk(5, dim=1).indices == labels[:, None]).any(dim=1)
        result["top5"] = 100.0 * float(top5.float().mean())
    result["per_class_top1"] = [
        100.0 * float(correct[labels == c].float().mean()) if (labels == c).any() else None
        for c in range(num_classes)
    ]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(predicted), accumulate=True)
    result["confusion"] = confusion.tolist()
    return result


def linear_probe(
    train: Features, test: Features, num_classes: int, config: ProbeConfig
) -> dict[str, Any]:
    """Standardised features → linear layer, AdamW with cosine decay, full epochs."""
    generator = torch.Generator().manual_seed(config.seed)
    mean, std = train[0].mean(dim=0), train[0].std(dim=0) + 1e-6
    x_train, x_test = (train[0] - mean) / std, (test[0] - mean) / std
    torch.manual_seed(config.seed)
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
        return accuracy(classifier(x_test), test[1], num_classes)


@torch.no_grad()
def knn_probe(
    train: Features, test: Features, num_classes: int, config: ProbeConfig
) -> dict[str, Any]:
    """Weighted kNN on cosine similarity (Wu et al., CVPR 2018): votes weighted exp(s/τ)."""
    bank = F.normalize(train[0], dim=1)
    results = {}
    for k in config.knn_k:
        k_eff = min(k, len(bank))
        scores = []
        for queries in F.normalize(test[0], dim=1).split(1024):
            similarity, index = (queries @ bank.T).topk(k_eff, dim=1)
            votes = torch.zeros(len(queries), num_classes)
            votes.scatter_add_(1, train[1][index], (similarity / config.knn_temperature).exp())
            scores.append(votes)
        results[f"k{k}"] = accuracy(torch.cat(scores), test[1], num_classes)
    return results


PROBES: dict[str, Callable[[Features, Features, int, ProbeConfig], dict[str, Any]]] = {
    "linear": linear_probe,
    "knn": knn_probe,
}


def evaluate(
    features: dict[str, list[Features]], num_classes: int, config: ProbeConfig
) -> list[dict[str, Any]]:
    """Every probe kind for each backbone, from the ``train`` and ``test`` features."""
    return [
        {
            kind: PROBES[kind](features["train"][i], features["test"][i], num_classes, config)
            for kind in config.kinds
        }
        for i in range(len(features["train"]))
    ]


def _splits(config: ProbeConfig, ctx: StageContext) -> tuple[dict[str, list[Path]], int]:
    data = ctx.inputs["data"]
    manifest = read_manifest(data)
    if config.test is not None:
        test_dir = ctx.inputs["test"]
        test_shards = split_shards(test_dir, "train") + split_shards(test_dir, "val")
    else:
        if manifest["splits"]["val"]["num_samples"] == 0:
            raise UserError(
                f"stage {config.name!r}: ingest stage {config.data!r} has an empty val split; "
                "set its val_fraction > 0 or name a labelled test set with `test:`"
            )
        test_shards = split_shards(data, "val")
    return {"train": split_shards(data, "train"), "test": test_shards}, manifest["num_classes"]


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    """The linear probe's top-1 when it ran, else the first kNN's."""
    first = results["linear"] if "linear" in results else next(iter(results["knn"].values()))
    return first


def run(config: ProbeConfig, ctx: StageContext) -> dict[str, Any]:
    splits, num_classes = _splits(config, ctx)
    backbone, description = load_backbone(ctx.inputs["model"])
    recipe = apply_overrides(
        get_recipe("eval"),
        {
            "size": description["input_size"],
            "center_crop_fraction": 1.0,
            "mean": tuple(description["mean"]),
            "std": tuple(description["std"]),
        },
    )[0]
    backbones = [backbone]
    if config.random_init_baseline:
        torch.manual_seed(config.seed)
        backbones.append(build_described_backbone(description).eval())
    features = extract_splits(backbones, splits, recipe, config)
    results, *baseline = evaluate(features, num_classes, config)
    headline = _headline(results)
    metrics: dict[str, Any] = {"top1": headline["top1"], **results}
    if baseline:
        metrics["top1_random_init"] = _headline(baseline[0])["top1"]
        metrics["random_init"] = baseline[0]
    confusion = headline.get("confusion")
    (ctx.out_dir / "confusion.json").write_text(json.dumps(confusion) + "\n")
    (ctx.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    summary = {"top1": metrics["top1"]}
    if "top1_random_init" in metrics:
        summary["top1_random_init"] = metrics["top1_random_init"]
    for k, result in results.get("knn", {}).items():
        summary[f"knn_{k}_top1"] = result["top1"]
    return summary
