"""What the probe stage does when it runs (its config: ``stages/probe.py``).

The driver reads the splits and the backbone, has the Ray tasks of ``features`` write
every split's features into ``<out_dir>/features``, then runs the probes of ``classifiers`` in
one Ray task per backbone (on a GPU with ``use_gpu``), and deletes the features. The driver
never holds features; a probe task holds ``classifiers.CHUNK_ROWS`` rows at a time.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import torch
from torch import nn

from sslpipe.datasets.ingest import read_manifest, split_shards
from sslpipe.datasets.recipes import ViewRecipe, apply_overrides, get_recipe

from ..errors import UserError
from ..models.weights import ModelDescription, load_backbone
from ..run.outputs import CONFUSION, METRICS
from ..run.ray_runtime import ensure_ray
from ..stages.base import WORKER_COMPUTE_THREADS, StageContext
from .classifiers import Features, knn_probe, linear_probe
from .features import (
    LABELS,
    ExtractionInputError,
    ExtractSettings,
    FeatureFile,
    extract_features,
    feature_path,
    task_resources,
)

if TYPE_CHECKING:
    from ..stages.probe import ProbeConfig

FEATURES_DIR = "features"
SPLITS = ("train", "test")


def load_features(directory: Path, split: str, name: str) -> Features:
    """A split's features of backbone ``name``, memory-mapped, with its labels."""
    labels = torch.from_numpy(np.load(feature_path(directory, split, LABELS)))
    return Features(FeatureFile(feature_path(directory, split, name)), labels)


def _linear(
    train: Features, test: Features, num_classes: int, config: ProbeConfig, device: torch.device
) -> dict[str, Any]:
    return linear_probe(
        train,
        test,
        num_classes,
        epochs=config.epochs,
        lr=config.lr,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        seed=config.seed,
        device=device,
    )


def _knn(
    train: Features, test: Features, num_classes: int, config: ProbeConfig, device: torch.device
) -> dict[str, Any]:
    return knn_probe(
        train,
        test,
        num_classes,
        ks=config.knn_k,
        temperature=config.knn_temperature,
        device=device,
    )


PROBES: dict[
    str, Callable[[Features, Features, int, ProbeConfig, torch.device], dict[str, Any]]
] = {"linear": _linear, "knn": _knn}


def probe_backbone(
    directory: Path, name: str, num_classes: int, config: ProbeConfig
) -> dict[str, Any]:
    """Every probe kind of ``config`` on backbone ``name``'s train and test features."""
    torch.set_num_threads(WORKER_COMPUTE_THREADS)
    device = torch.device("cuda") if config.use_gpu else torch.device("cpu")
    train, test = (load_features(directory, split, name) for split in SPLITS)
    return {kind: PROBES[kind](train, test, num_classes, config, device) for kind in config.kinds}


def evaluate(
    directory: Path,
    names: list[str],
    num_classes: int,
    config: ProbeConfig,
    resources: dict[str, Any],
) -> list[dict[str, Any]]:
    """``probe_backbone`` for each backbone, as Ray tasks spread over the nodes."""
    task = ray.remote(probe_backbone).options(**resources, scheduling_strategy="SPREAD")
    return ray.get([task.remote(directory, name, num_classes, config) for name in names])


def probe_splits(config: ProbeConfig, ctx: StageContext) -> tuple[dict[str, list[list[Path]]], int]:
    """Per split (``SPLITS``) the ingested splits it is made of, and the number of classes."""
    data = ctx.inputs["data"]
    manifest = read_manifest(data)
    if config.test is not None:
        test_dir = ctx.inputs["test"]
        test = [split_shards(test_dir, "train"), split_shards(test_dir, "val")]
        if read_manifest(test_dir)["num_samples"] == 0:
            raise UserError(f"stage {config.name!r}: ingest stage {config.test!r} is empty")
    else:
        if manifest["splits"]["val"]["num_samples"] == 0:
            raise UserError(
                f"stage {config.name!r}: ingest stage {config.data!r} has an empty val split; "
                "set its val_fraction > 0 or name a labelled test set with `test:`"
            )
        test = [split_shards(data, "val")]
    if manifest["splits"]["train"]["num_samples"] == 0:
        raise UserError(
            f"stage {config.name!r}: ingest stage {config.data!r}'s train split is empty"
        )
    return {"train": [split_shards(data, "train")], "test": test}, manifest["num_classes"]


def eval_recipe(description: ModelDescription) -> ViewRecipe:
    """The ``eval`` view at the model's input size and normalisation, without a margin."""
    overrides = {
        "size": description.input_size,
        "center_crop_fraction": 1.0,
        "mean": description.mean,
        "std": description.std,
    }
    return apply_overrides(get_recipe("eval"), overrides)[0]


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    """The linear probe's result when it ran, else the first kNN's."""
    return results["linear"] if "linear" in results else next(iter(results["knn"].values()))


def _throughput(reports: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    images = sum(report["images"] for report in reports)
    return {
        "images": images,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 1),
        "tasks": len(reports),
        "nodes": len({report["node"] for report in reports}),
    }


def probed_features(
    backbone: nn.Module, config: ProbeConfig, description: ModelDescription
) -> nn.Module:
    """The backbone's pooled features, or DINO's evaluation features of a ViT
    (``n_last_blocks``, ``avgpool_patch_tokens``)."""
    if config.n_last_blocks == 1 and not config.avgpool_patch_tokens:
        return backbone
    if not hasattr(backbone, "forward_last_blocks"):
        raise UserError(
            f"stage {config.name!r}: n_last_blocks and avgpool_patch_tokens need a ViT "
            f"backbone; {description.backbone!r} has no blocks of tokens (remove them)"
        )
    from sslpipe.ssl_ops.vit import LastBlocksFeatures  # imports timm: ViTs only

    return LastBlocksFeatures(backbone, config.n_last_blocks, config.avgpool_patch_tokens)


def run_probe(config: ProbeConfig, ctx: StageContext) -> dict[str, Any]:
    splits, num_classes = probe_splits(config, ctx)
    backbone, description = load_backbone(ctx.inputs["model"])
    backbones = {"trained": probed_features(backbone, config, description)}
    if config.random_init_baseline:
        torch.manual_seed(config.seed)
        random_init = description.build_backbone().eval()
        backbones["random_init"] = probed_features(random_init, config, description)
    settings = ExtractSettings(
        batch_size=config.batch_size,
        num_threads=config.dali_threads,
        use_gpu=config.use_gpu,
        loader=config.loader,
        precision=config.precision,
        prefetch=config.loader_prefetch,
        memory_map=config.memory_map,
    )
    ensure_ray(min_cpus=config.cpus_per_worker())
    resources = task_resources(config.name, config.cpus_per_worker(), config.use_gpu)
    directory = ctx.out_dir / FEATURES_DIR
    directory.mkdir()
    try:
        began = time.perf_counter()
        reports = extract_features(
            backbones,
            splits,
            eval_recipe(description),
            settings,
            num_workers=config.num_workers,
            directory=directory,
            resources=resources,
        )
        extraction = _throughput(reports, time.perf_counter() - began)
        print(
            f"[{config.name}] features of {extraction['images']} images in "
            f"{extraction['seconds']} s ({extraction['images_per_s']} images/s, "
            f"{extraction['tasks']} tasks on {extraction['nodes']} nodes)",
            flush=True,
        )
        results, *baseline = evaluate(directory, list(backbones), num_classes, config, resources)
    except ExtractionInputError as error:
        raise UserError(f"stage {config.name!r}: {error}") from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    headline = _headline(results)
    metrics: dict[str, Any] = {"top1": headline["top1"], **results}
    if baseline:
        metrics["top1_random_init"] = _headline(baseline[0])["top1"]
        metrics["random_init"] = baseline[0]
    metrics["extraction"] = extraction
    (ctx.out_dir / CONFUSION).write_text(json.dumps(headline.get("confusion")) + "\n")
    (ctx.out_dir / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    summary = {"top1": metrics["top1"]}
    if "top1_random_init" in metrics:
        summary["top1_random_init"] = metrics["top1_random_init"]
    for k, result in results.get("knn", {}).items():
        summary[f"knn_{k}_top1"] = result["top1"]
    summary["extract_images_per_s"] = extraction["images_per_s"]
    return summary
