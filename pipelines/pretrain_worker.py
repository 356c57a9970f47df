"""The loop each Ray Train worker runs for the pretrain stage.

Each worker reads its own slice of the train shards through DALI (``shard_id`` = world rank,
seed = base seed + rank), takes ``global_batch_size / world_size`` images per step, and the
objectives in ``ssl_ops`` gather embeddings across workers with gradients, so a step is the
same math as one process on the global batch. An epoch ends with a checkpoint; a restarted
worker group resumes from the latest one.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from sslpipe.datasets.dali_views import LoaderConfig, ViewLoader
from sslpipe.ssl_ops import build_backbone, get_method, projector
from sslpipe.ssl_ops.optim import build_optimizer, warmup_cosine

from .stages.pretrain import PretrainConfig


class MultiViewEncoder(nn.Module):
    """Backbone + projector applied to every view in one forward call (one DDP forward)."""

    def __init__(self, backbone: nn.Module, projector_dims: list[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector(backbone.feature_dim, projector_dims)

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.projector(self.backbone(view)) for view in views]


def model_description(config: PretrainConfig, feature_dim: int) -> dict[str, Any]:
    recipe = config.recipes()[0]
    return {
        "method": config.method,
        "backbone": config.backbone,
        "cifar_stem": config.cifar_stem,
        "feature_dim": feature_dim,
        "input_size": recipe.size,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "epochs": config.epochs,
    }


def _save_checkpoint(
    directory: Path,
    encoder: MultiViewEncoder,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: dict[str, int],
    history: list[dict[str, float]],
    description: dict[str, Any],
) -> None:
    torch.save(
        {
            "encoder": encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "progress": progress,
            "torch_rng": torch.get_rng_state(),
        },
        directory / "state.pt",
    )
    torch.save(encoder.backbone.state_dict(), directory / "backbone.pt")
    (directory / "model.json").write_text(json.dumps(description, indent=2) + "\n")
    (directory / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def train_worker(loop_config: dict[str, Any]) -> None:
    # Ray Train logs every report and checkpoint at INFO; the stage prints its own progress.
    logging.getLogger().setLevel(logging.WARNING)
    config = PretrainConfig.model_validate(loop_config["config"])
    settings = config.resolved()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)

    backbone = build_backbone(config.backbone, cifar_stem=config.cifar_stem)
    encoder = MultiViewEncoder(backbone, settings["projector"]).to(device)
    model = ray.train.torch.prepare_model(encoder)
    method = get_method(config.method)

    local_batch = config.global_batch_size // world
    loader = ViewLoader(
        [Path(s) for s in loop_config["shards"]],
        config.recipes(),
        LoaderConfig(
            batch_size=local_batch,
            shard_id=rank,
            num_shards=world,
            seed=config.seed + rank,
            num_threads=config.dali_threads,
            device="gpu" if config.use_gpu else "cpu",
        ),
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    lr = settings["base_lr"] * config.global_batch_size / 256
    optimizer = build_optimizer(
        settings["optimizer"], encoder, lr=lr, weight_decay=settings["weight_decay"]
    )
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps)
    )

    progress = {"epoch": 0, "step": 0}
    history: list[dict[str, float]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "state.pt", weights_only=False)
            history_text = (Path(directory) / "history.jsonl").read_text()
            history = [json.loads(line) for line in history_text.splitlines()]
        encoder.load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = state["progress"]
        torch.set_rng_state(state["torch_rng"])

    description = model_description(config, backbone.feature_dim)
    for epoch in range(progress["epoch"], config.epochs):
        model.train()
        epoch_start = time.perf_counter()
        waited = 0.0
        ready = time.perf_counter()
        for views, _labels in loader:
            fetched = time.perf_counter()
            waited += fetched - ready
            embeddings = model([v.to(device, non_blocking=True) for v in views])
            out = method.loss(embeddings, **config.loss)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            scheduler.step()
            progress["step"] += 1
            step_seconds, wait_seconds = time.perf_counter() - ready, fetched - ready
            ready = time.perf_counter()
            record = {name: float(value.detach()) for name, value in out.items()}
            record |= {
                "step": progress["step"],
                "epoch": epoch,
                "lr": scheduler.get_last_lr()[0],
                "embedding_std": float(embeddings[0].detach().std(dim=0).mean()),
                "images_per_s": config.global_batch_size / step_seconds,
                "data_wait_share": wait_seconds / step_seconds,
            }
            history.append(record)
            if rank == 0 and progress["step"] % config.log_every_steps == 0:
                print(
                    f"[pretrain] epoch {epoch + 1}/{config.epochs} "
                    f"step {progress['step']}/{total_steps} loss {record['loss']:.4f}",
                    flush=True,
                )
        elapsed = time.perf_counter() - epoch_start
        progress["epoch"] = epoch + 1
        metrics = {
            "epoch": epoch + 1,
            "step": progress["step"],
            "loss": history[-1]["loss"],
            "epoch_seconds": elapsed,
            "images_per_s": steps_per_epoch * config.global_batch_size / elapsed,
            "data_wait_share": waited / elapsed,
        }
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                _save_checkpoint(
                    Path(directory), encoder, optimizer, scheduler, progress, history, description
                )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(directory) if rank == 0 else None,
            )
