"""The loop each Ray Train worker runs for the pretrain stage.

Each worker reads its own slice of the train shards through DALI (``shard_id`` = world rank,
seed = base seed + rank) and takes ``global_batch_size / world_size`` images per step. The
objectives in ``ssl_ops`` gather embeddings across workers with gradients and batch norm spans
the global batch (``SyncBatchNorm`` on GPU, ``GlobalBatchNorm`` on CPU), so one step is the same
math as one process holding the global batch. Checkpoints (model, optimizer, scheduler, step,
RNG, history, DALI positions, PIRL's memory bank) are written every ``checkpoint_every_steps``
and at each epoch end; a restarted worker group resumes from the latest one.

Methods with a memory bank (PIRL) read each sample's split index from the shards
(``KEY.index``); every rank holds the whole bank and applies the same momentum update with
the gathered batch (``ssl_ops.pirl``), so the replicas stay identical and rank 0's copy is
the one checkpointed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sslpipe.datasets.dali_views import LoaderConfig, ViewLoader
from sslpipe.datasets.progress import Progress
from sslpipe.ssl_ops import JigsawHead, MemoryBank, build_backbone, get_method, projector
from sslpipe.ssl_ops.metrics import rankme
from sslpipe.ssl_ops.optim import build_optimizer, warmup_cosine
from sslpipe.ssl_ops.sync_batchnorm import convert_to_global_batchnorm

from .stages.pretrain import PretrainConfig


class TrainingStopped(RuntimeError):
    """A guard stopped training (NaN/Inf or collapse); the last good checkpoint is kept."""


class MultiViewEncoder(nn.Module):
    """Backbone + projector applied to every view in one forward call (one DDP forward).

    Returns the projections of all views and the backbone features of the first view (for
    the online probe).
    """

    def __init__(self, backbone: nn.Module, projector_dims: list[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector(backbone.feature_dim, projector_dims)

    def forward(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        features = [self.backbone(view) for view in views]
        return [self.projector(f) for f in features], features[0]


class JigsawEncoder(MultiViewEncoder):
    """PIRL's two branches on one backbone (Misra & van der Maaten, CVPR 2020, section 3.2):
    f = projector(backbone(image)) and g = ``JigsawHead`` over the backbone features of the
    shuffled patches. ``views = [image, patches, order]``, as a ``pirl`` loader yields them.
    """

    def __init__(self, backbone: nn.Module, projector_dims: list[int], num_patches: int) -> None:
        super().__init__(backbone, projector_dims)
        self.jigsaw = JigsawHead(backbone.feature_dim, projector_dims[-1], num_patches)

    def forward(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        image, patches, order = views
        features = self.backbone(image)
        jigsaw = self.jigsaw.embed(self.backbone, patches, order)
        return [self.projector(features), jigsaw], features


def build_encoder(config: PretrainConfig, world_size: int, device: torch.device) -> nn.Module:
    """The encoder with batch norm over the global batch when several workers train; a view
    recipe with a jigsaw view (PIRL) gets the ``JigsawEncoder``."""
    torch.manual_seed(config.seed)
    backbone = build_backbone(config.backbone, cifar_stem=config.cifar_stem)
    dims = config.resolved()["projector"]
    jigsaw = next((recipe.jigsaw for recipe in config.recipes() if recipe.jigsaw), None)
    if jigsaw is None:
        encoder = MultiViewEncoder(backbone, dims)
    else:
        encoder = JigsawEncoder(backbone, dims, jigsaw.grid**2)
    if world_size > 1:
        if device.type == "cuda":
            encoder = nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        else:
            encoder = convert_to_global_batchnorm(encoder)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    return encoder.to(device)


def build_bank(config: PretrainConfig, num_samples: int, device: torch.device) -> MemoryBank | None:
    """One row per training image for methods with a memory bank, seeded identically on
    every rank; None for the others."""
    if not get_method(config.method).memory_bank:
        return None
    dim = config.resolved()["projector"][-1]
    return MemoryBank(num_samples, dim, seed=config.seed).to(device)


def learning_rate(config: PretrainConfig, base_lr: float | None = None) -> float:
    """``base_lr × global_batch / 256`` for methods that scale linearly, else ``base_lr``."""
    base_lr = config.resolved()["base_lr"] if base_lr is None else base_lr
    if get_method(config.method).lr_scaling == "linear":
        return base_lr * config.global_batch_size / 256
    return base_lr


@dataclass
class StepResult:
    values: dict[str, float]
    projections: list[torch.Tensor]
    features: torch.Tensor


def train_step(
    model: nn.Module,
    views: list[torch.Tensor],
    config: PretrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    loss_inputs: dict[str, Any] | None = None,
) -> StepResult:
    """One optimizer step; raises ``TrainingStopped`` naming the step and the non-finite term.

    ``loss_inputs`` are per-batch keyword arguments of the objective (PIRL's ``bank`` and
    ``indices``)."""
    device = views[0].device
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and config.precision == "bf16"
        else contextlib.nullcontext()
    )
    with autocast:
        projections, features = model(views)
        try:
            out = get_method(config.method).loss(projections, **config.loss, **(loss_inputs or {}))
        except FloatingPointError as error:
            raise TrainingStopped(f"step {step}: {error}") from None
    values = {name: float(value.detach()) for name, value in out.items()}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise TrainingStopped(f"step {step}: non-finite {', '.join(bad)} ({values})")
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    return StepResult(values, [p.detach() for p in projections], features.detach())


@dataclass
class Monitor:
    """Online linear probe on detached features, RankMe and the collapse guard."""

    probe: nn.Linear | None
    optimizer: torch.optim.Optimizer | None
    config: PretrainConfig
    low_std_checks: int = 0
    correct: int = 0
    seen: int = 0
    latest: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, config: PretrainConfig, feature_dim: int, num_classes: int, device):
        if num_classes <= 1:
            return cls(None, None, config)
        probe = nn.Linear(feature_dim, num_classes).to(device)
        return cls(probe, torch.optim.Adam(probe.parameters(), lr=1e-3), config)

    def observe(self, result: StepResult, labels: torch.Tensor, step: int) -> dict[str, float]:
        z = result.projections[0].float()
        normalised_std = float(F.normalize(z, dim=1).std(dim=0).mean()) * math.sqrt(z.shape[1])
        record = {"embedding_std": float(z.std(dim=0).mean()), "normalised_std": normalised_std}
        labelled = labels >= 0
        if self.probe is not None and labelled.any():
            logits = self.probe(result.features.float()[labelled])
            loss = F.cross_entropy(logits, labels[labelled])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.correct += int((logits.argmax(1) == labels[labelled]).sum())
            self.seen += int(labelled.sum())
        if step % self.config.monitor_every_steps == 0:
            self.latest = {"rankme": float(rankme(z))}
            if self.seen:
                self.latest["online_probe_top1"] = 100.0 * self.correct / self.seen
                self.correct = self.seen = 0
            self._check_collapse(normalised_std, step)
        return record | self.latest

    def _check_collapse(self, normalised_std: float, step: int) -> None:
        if normalised_std >= self.config.collapse_std_threshold:
            self.low_std_checks = 0
            return
        self.low_std_checks += 1
        if self.low_std_checks >= self.config.collapse_patience:
            raise TrainingStopped(
                f"step {step}: representation collapse — normalised embedding std "
                f"{normalised_std:.4f} < {self.config.collapse_std_threshold} for "
                f"{self.low_std_checks} consecutive checks (set collapse_std_threshold: 0 "
                "to disable)"
            )


def model_description(
    config: PretrainConfig, feature_dim: int, loop_config: dict[str, Any]
) -> dict[str, Any]:
    recipe = config.recipes()[0]
    return {
        "method": config.method,
        "backbone": config.backbone,
        "cifar_stem": config.cifar_stem,
        "feature_dim": feature_dim,
        "projector": config.resolved()["projector"],
        "input_size": recipe.size,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "epochs": config.epochs,
        "data_fingerprint": loop_config["data_fingerprint"],
        "warm_start": loop_config["warm_start"],
    }


@dataclass
class TrainState:
    """Everything a checkpoint holds; ``step`` counts optimizer steps since the start."""

    encoder: MultiViewEncoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    description: dict[str, Any]
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    loader_states: list[dict[str, Any]] | None = None  # one DALI state per rank
    bank: MemoryBank | None = None  # identical on every rank

    def save(self, directory: Path) -> None:
        torch.save(
            {
                "encoder": self.encoder.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "torch_rng": torch.get_rng_state(),
                "loader_states": self.loader_states,
                "bank": None if self.bank is None else self.bank.state_dict(),
            },
            directory / "state.pt",
        )
        torch.save(self.encoder.backbone.state_dict(), directory / "backbone.pt")
        torch.save(self.encoder.state_dict(), directory / "encoder.pt")
        (directory / "model.json").write_text(json.dumps(self.description, indent=2) + "\n")
        history = "".join(json.dumps(h) + "\n" for h in self.history)
        (directory / "history.jsonl").write_text(history)

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "state.pt", weights_only=False, map_location="cpu")
        self.encoder.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.loader_states = state.get("loader_states")
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])
        torch.set_rng_state(state["torch_rng"])
        lines = (directory / "history.jsonl").read_text().splitlines()
        self.history = [json.loads(line) for line in lines][: self.step]


def _report(state: TrainState, loader: ViewLoader, metrics: dict[str, float], rank: int) -> None:
    """Report to Ray Train (every rank must call); rank 0 attaches the checkpoint, which holds
    every rank's DALI position so that a restart continues mid-epoch with the same samples."""
    local = loader.state_dict()
    if dist.is_initialized() and dist.get_world_size() > 1:
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, local)
    else:
        states = [local]
    state.loader_states = states
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            state.save(Path(directory))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def _stop_requested(stop_file: Path, device: torch.device) -> bool:
    """Whether the driver asked to stop; every rank gets the same answer at the same step."""
    flag = torch.tensor([float(stop_file.exists())], device=device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def train_worker(loop_config: dict[str, Any]) -> None:
    # Ray Train logs every report and checkpoint at INFO; the stage prints its own progress.
    for name in ("", "ray", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    config = PretrainConfig.model_validate(loop_config["config"])
    settings = config.resolved()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    encoder = build_encoder(config, world, device)
    if loop_config["warm_start"] and ray.train.get_checkpoint() is None:
        encoder.backbone.load_state_dict(load_file(loop_config["warm_start"], device=str(device)))
    model = ray.train.torch.prepare_model(encoder, move_to_device=False)
    shards = [Path(s) for s in loop_config["shards"]]
    bank = build_bank(config, loop_config["num_samples"], device)
    local_batch = config.global_batch_size // world
    loader_config = LoaderConfig(
        batch_size=local_batch,
        shard_id=rank,
        num_shards=world,
        seed=config.seed + rank,
        num_threads=config.dali_threads,
        device="gpu" if device.type == "cuda" else "cpu",
        with_index=bank is not None,
    )
    stop_file = Path(loop_config["stop_file"])
    loader = ViewLoader(shards, config.recipes(), loader_config)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * config.epochs
    optimizer = build_optimizer(
        settings["optimizer"],
        encoder,
        lr=learning_rate(config),
        weight_decay=settings["weight_decay"],
        bias_lr=learning_rate(config, settings["bias_lr"]) if settings["bias_lr"] else None,
    )
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps)
    )
    state = TrainState(
        encoder,
        optimizer,
        scheduler,
        model_description(config, encoder.backbone.feature_dim, loop_config),
        bank=bank,
    )
    # Before the checkpoint restores the RNG, so that a resumed run draws what the original drew.
    monitor = Monitor.create(
        config, encoder.backbone.feature_dim, loop_config["num_classes"], device
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state.load(Path(directory))
        if state.loader_states is not None and len(state.loader_states) == world:
            loader = ViewLoader(
                shards, config.recipes(), loader_config, checkpoint=state.loader_states[rank]
            )
        if rank == 0:
            print(f"[pretrain] resumed from step {state.step}/{total_steps}", flush=True)
    # Lines with ETA from rank 0 (a worker's output reaches the driver line by line).
    progress = None
    if rank == 0:
        progress = Progress(
            "pretrain", total_steps, done=state.step, bar=False, log_every=config.log_every_steps
        )
    while state.step < total_steps:
        epoch = state.step // steps_per_epoch
        remaining = steps_per_epoch - state.step % steps_per_epoch
        epoch_start = ready = time.perf_counter()
        waited = 0.0
        # A loader restored mid-epoch yields the rest of that epoch; a fresh one a full epoch.
        for views, labels, *indices in loader:
            fetched = time.perf_counter()
            waited += fetched - ready
            views = [v.to(device, non_blocking=True) for v in views]
            if device.type == "cuda":
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            loss_inputs = {"bank": bank, "indices": indices[0]} if bank is not None else None
            result = train_step(
                model, views, config, optimizer, scheduler, state.step + 1, loss_inputs
            )
            state.step += 1
            step_seconds, wait_seconds = time.perf_counter() - ready, fetched - ready
            ready = time.perf_counter()
            record = result.values | monitor.observe(result, labels.to(device), state.step)
            record |= {
                "step": state.step,
                "epoch": epoch,
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": config.global_batch_size / step_seconds,
                "images_per_s_per_worker": local_batch / step_seconds,
                "data_wait_share": wait_seconds / step_seconds,
            }
            state.history.append(record)
            if progress is not None:
                progress.update(
                    status=f"epoch {epoch + 1}/{config.epochs} loss {record['loss']:.4f} "
                    f"{record['images_per_s']:.0f} img/s"
                )
            end_of_epoch = state.step % steps_per_epoch == 0
            periodic = config.checkpoint_every_steps and (
                state.step % config.checkpoint_every_steps == 0
            )
            stopping = _stop_requested(stop_file, device)
            if end_of_epoch or periodic or stopping:
                elapsed = time.perf_counter() - epoch_start
                trained = state.step - (steps_per_epoch - remaining) - epoch * steps_per_epoch
                metrics = {
                    "epoch": epoch + (1 if end_of_epoch else 0),
                    "step": state.step,
                    "loss": record["loss"],
                    "images_per_s": trained * config.global_batch_size / elapsed,
                    "data_wait_share": waited / elapsed,
                }
                _report(state, loader, metrics, rank)
                ready = time.perf_counter()  # time spent checkpointing is not data wait
            if stopping:
                if rank == 0:
                    print(f"[pretrain] stopped at step {state.step} (checkpoint saved)")
                return
