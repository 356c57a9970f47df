"""What a training checkpoint holds, and publishing it through Ray Train.

A checkpoint directory has ``state.pt`` (the method's whole ``state_dict`` — networks, target
networks, memory banks — the optimizer, the scheduler, the step, the torch RNG and every
rank's loader state: the group's position in the epoch and the rank's own random generators),
``history.jsonl`` and ``model.json``. The final checkpoint also has
the published weights: ``backbone.pt`` and ``encoder.pt`` (backbone + projector), written once.
Periodic checkpoints are uploaded asynchronously (Ray Train's ``CheckpointUploadMode.ASYNC``),
so training goes on while the copy to ``storage_path`` runs.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointUploadMode

from sslpipe.ssl_ops import SSLMethod
from sslpipe.ssl_ops.optim import HyperparameterScheduler

from ..models.weights import ModelDescription
from ..run.outputs import BACKBONE_WEIGHTS, ENCODER_WEIGHTS, HISTORY

STATE = "state.pt"


@dataclass
class TrainState:
    """Everything a checkpoint holds; ``step`` counts optimizer steps since the start."""

    method: SSLMethod
    optimizer: torch.optim.Optimizer
    scheduler: HyperparameterScheduler
    description: ModelDescription
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    loader_states: list[dict[str, Any]] | None = None  # one per rank

    def save(self, directory: Path, *, final: bool) -> None:
        torch.save(
            {
                "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "torch_rng": torch.get_rng_state(),
                "loader_states": self.loader_states,
            },
            directory / STATE,
        )
        self.description.write(directory)
        (directory / HISTORY).write_text("".join(json.dumps(h) + "\n" for h in self.history))
        if final:
            torch.save(self.method.backbone.state_dict(), directory / BACKBONE_WEIGHTS)
            torch.save(self.method.encoder().state_dict(), directory / ENCODER_WEIGHTS)

    def load(self, directory: Path) -> None:
        state = torch.load(directory / STATE, weights_only=False, map_location="cpu")
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.loader_states = state["loader_states"]
        torch.set_rng_state(state["torch_rng"])
        lines = (directory / HISTORY).read_text().splitlines()
        self.history = [r for r in map(json.loads, lines) if r["step"] <= self.step]


def report(
    state: TrainState,
    loader_state: dict[str, Any],
    metrics: dict[str, Any],
    *,
    rank: int,
    final: bool = False,
    upload_now: bool = False,
) -> None:
    """Report to Ray Train (every rank must call); rank 0 attaches the checkpoint, which holds
    every rank's loader state so that a restart continues mid-epoch with the same samples (a
    group of another size from their shared position, ``loaders.resume_state``). The final
    checkpoint and one with ``upload_now`` (a node is about to go) are in ``storage_path``
    when this returns; the others upload in the background."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, loader_state)
    else:
        states = [loader_state]
    state.loader_states = states
    mode = CheckpointUploadMode.SYNC if final or upload_now else CheckpointUploadMode.ASYNC
    checkpoint = None
    if rank == 0:
        # Ray Train deletes the folder once it is uploaded (ASYNC) or copied (SYNC, below).
        directory = Path(tempfile.mkdtemp(prefix="sslpipe-checkpoint-"))
        state.save(directory, final=final)
        checkpoint = ray.train.Checkpoint.from_directory(directory)
    ray.train.report(
        metrics,
        checkpoint=checkpoint,
        checkpoint_upload_mode=mode,
        delete_local_checkpoint_after_upload=True,
    )
