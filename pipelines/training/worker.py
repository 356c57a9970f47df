"""The loop every Ray Train worker runs: loader → method → optimizer → loop → checkpoint.

Each worker takes its part of every step's global batch (``shard_id`` = world rank,
``global_batch_size / world_size`` images; ``loaders.EpochPlan``: the step's samples do not
depend on the group's size), so an elastic group that restarts with another size continues the
epoch from the checkpoint's position with the samples not yet seen. The method's objective
gathers embeddings across workers with gradients and batch norm spans the global batch
(``GlobalBatchNorm``: one differentiable all-reduce per layer, no host synchronisation), so one
step is the same math as one process holding the global batch, whatever the group's size.

The loop synchronises with the host only at sync points — every ``log_every_steps``, every
``monitor_every_steps``, at checkpoints and at the end. There, one all-reduce decides for
every rank at once whether to stop: a non-finite loss or embedding since the last sync point
(a guard: the run ends with the reason, the last good checkpoint is kept and Ray does not
retry it), representation collapse, or the driver's stop request (SIGINT/SIGTERM: checkpoint
and return). A sync point also checkpoints when ``checkpoint_every_minutes`` have passed on
rank 0's clock, and, when Ray Train reports a node of the group being drained (a preemption
notice), checkpoints at once and waits for the group's restart without that node. Between sync
points the loss terms add up on the device. The first step's strict checks decide collectively
too (``checks.StrictCheckError``, raised on every rank at once) and end the run as a guard
does: every rank returns, since Ray Train retries a raised error of any type up to
``max_failures`` times. ``data_wait_share`` is the time the device waited for batches
(``batches.DataWaitClock``: CUDA events on a GPU, read at the sync point) over the window's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from sslpipe.datasets.loaders import LoaderConfig, build_loader, resume_state
from sslpipe.datasets.progress import Progress
from sslpipe.ssl_ops import Batch, MethodOutput
from sslpipe.ssl_ops import Progress as StepProgress  # datasets.progress has a Progress bar
from sslpipe.ssl_ops.checks import StrictCheckError, strict_checks

from ..models.weights import ModelDescription
from ..stages.base import WORKER_COMPUTE_THREADS
from .batches import DataWaitClock, ReplayLoader, TimedLoader
from .checkpoint import TrainState, report
from .job import PretrainJob
from .monitor import Monitor
from .step import (
    build_scheduler,
    build_training_method,
    build_training_optimizer,
    method_settings,
    train_step,
)


@dataclass
class Window:
    """Loss terms summed on the device between two sync points, and the first bad step."""

    device: torch.device
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    first_bad: torch.Tensor | None = None
    started: float = field(default_factory=time.perf_counter)

    def add(self, output: MethodOutput, step: int) -> None:
        for name, value in output.losses.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        checked = [*output.losses.values()]
        checked += [output.embedding] if output.embedding is not None else []
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in checked]).all()
        if self.first_bad is None:
            self.first_bad = torch.full((), math.inf, device=self.device)
        self.first_bad = torch.where(finite, self.first_bad, self.first_bad.clamp(max=step))
        self.steps += 1

    def reset(self) -> None:
        self.sums, self.steps, self.first_bad = {}, 0, None
        self.started = time.perf_counter()


class Trainer:
    """One worker's training run (built from the job, restored from Ray Train's latest
    checkpoint when there is one)."""

    def __init__(self, job: PretrainJob) -> None:
        self.job = job
        self.config = config = job.config
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.local_batch = config.global_batch_size // self.world
        self.sample_log = (
            Path(job.sample_log) / f"rank-{self.rank}.jsonl" if job.sample_log else None
        )

        self.method = build_training_method(config, job.num_samples, self.world, self.device)
        checkpoint = ray.train.get_checkpoint()
        if job.warm_start and checkpoint is None:
            weights = load_file(job.warm_start, device=str(self.device))
            self.method.backbone.load_state_dict(weights)
        self.model = ray.train.torch.prepare_model(
            self.method,
            move_to_device=False,
            # Buffers (BN statistics, which the global BN keeps equal on every rank, a memory
            # bank) are synchronised once at the start, not broadcast at every forward.
            parallel_strategy_kwargs={"forward_sync_buffers": False},
        )
        self.optimizer = build_training_optimizer(config, self.method)
        self.loader = self._loader(None)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = build_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.state = TrainState(self.method, self.optimizer, self.scheduler, self._description())
        # Before the checkpoint restores the RNG, so that a resumed run draws what the
        # original drew.
        self.monitor = Monitor.create(
            config, self.method.backbone.feature_dim, job.num_classes, self.device
        )
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                self.state.load(Path(directory))
            # The group's position in the epoch, whatever size it had (loaders.EpochPlan).
            self.loader = self._loader(
                resume_state(self.state.loader_states, self.rank, self.world)
            )
            if self.rank == 0:
                print(
                    f"[pretrain] resumed from step {self.state.step}/{self.total_steps} on "
                    f"{self.world} worker(s)",
                    flush=True,
                )
        self.progress = (
            Progress(
                "pretrain",
                self.total_steps,
                done=self.state.step,
                bar=False,
                log_every=config.log_every_steps,
            )
            if self.rank == 0
            else None
        )
        self.window = Window(self.device)
        self.last_checkpoint = time.monotonic()

    def _loader(self, checkpoint: dict[str, Any] | None) -> Any:
        config = self.config
        loader = build_loader(
            config.loader,
            self.job.shards,
            config.recipes(),
            LoaderConfig(
                batch_size=self.local_batch,
                shard_id=self.rank,
                num_shards=self.world,
                seed=config.seed,  # the same on every rank (LoaderConfig)
                num_threads=config.dali_threads,
                prefetch=config.loader_prefetch,
                memory_map=config.memory_map,
                device="gpu" if self.device.type == "cuda" else "cpu",
                with_index=config.card().needs_indices or self.job.sample_log is not None,
            ),
            checkpoint=checkpoint,
        )
        return ReplayLoader(loader, self.device) if config.synthetic_data else loader

    def _description(self) -> ModelDescription:
        config, recipe = self.config, self.config.recipes()[0]
        return ModelDescription(
            method=config.method,
            backbone=config.backbone,
            backbone_options=method_settings(config, self.job.num_samples).backbone_options(),
            feature_dim=self.method.backbone.feature_dim,
            head=None if (head := self.method.head_spec) is None else vars(head),
            input_size=recipe.size,
            mean=recipe.mean,
            std=recipe.std,
            epochs=config.epochs,
            data_fingerprint=self.job.data_fingerprint,
            warm_start=self.job.warm_start,
        )

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        clock = DataWaitClock(self.device)
        first = True
        while self.state.step < self.total_steps:
            # A loader restored mid-epoch yields the rest of that epoch; a fresh one a full one.
            for views, batch in TimedLoader(self.loader, self.device, clock):
                try:
                    # The first step checks what the loop then takes for granted (equal batch
                    # sizes on every rank, finite inputs), at the cost of host syncs; a failed
                    # check raises on every rank at once (checks.StrictCheckError).
                    with strict_checks() if first else contextlib.nullcontext():
                        output = self._step(views, batch)
                except StrictCheckError as error:
                    self._guard_stop(f"step {self.state.step + 1}: {error}")
                    return
                first = False
                if self._is_sync_point() and not self._sync(output, clock):
                    return
        self._finish()

    def _step(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        progress = StepProgress.at(self.state.step, self.steps_per_epoch, self.total_steps)
        output = train_step(
            self.model,
            self.method,
            views,
            batch,
            self.optimizer,
            self.scheduler,
            self.config,
            progress,
        )
        step = self.state.step = progress.step + 1
        if self.sample_log is not None:
            epoch = (step - 1) // self.steps_per_epoch
            _log_samples(self.sample_log, step, epoch, self.world, batch)
        if self.job.step_pause_s:
            time.sleep(self.job.step_pause_s)
        self.window.add(output, step)
        self.monitor.observe(output, batch.labels)
        return output

    def _is_sync_point(self) -> bool:
        step, config = self.state.step, self.config
        return (
            step % config.log_every_steps == 0
            or self.monitor.is_check_step(step)
            or self._is_checkpoint_step()
            or step == self.total_steps
        )

    def _is_checkpoint_step(self) -> bool:
        step, config = self.state.step, self.config
        epoch_end = step % self.steps_per_epoch == 0
        every_epochs = (step // self.steps_per_epoch) % config.checkpoint_every_epochs == 0
        periodic = bool(config.checkpoint_every_steps) and (
            step % config.checkpoint_every_steps == 0
        )
        return (epoch_end and every_epochs) or periodic

    def _sync(self, output: MethodOutput, clock: DataWaitClock) -> bool:
        """The sync point: record, decide for every rank, checkpoint. False = stop now."""
        step = self.state.step
        stats = self.monitor.statistics(output, step)
        stop_requested = self.rank == 0 and ray.get(self.job.control.stop_requested.remote())
        assert self.window.first_bad is not None
        # An all-reduce (MAX) decides for every rank: −(first bad step), the stop request, the
        # largest normalised std (collapse only if every rank's embeddings collapsed) and
        # whether rank 0's clock says a timed checkpoint is due.
        decision = torch.stack(
            [
                -self.window.first_bad,
                torch.tensor(float(stop_requested), device=self.device),
                self.monitor.spread(stats, self.device),
                torch.tensor(float(self.rank == 0 and self._checkpoint_due()), device=self.device),
            ]
        )
        names = list(self.window.sums)
        # Loss terms averaged over ranks (per-sample objectives give each rank its own mean).
        means = torch.stack([self.window.sums[n] / self.window.steps for n in names])
        if dist.is_initialized() and self.world > 1:
            dist.all_reduce(decision, op=dist.ReduceOp.MAX)
            dist.all_reduce(means)
            means /= self.world
        values = torch.cat(
            [decision, means, *[v.float().reshape(1) for v in stats.values()]]
        ).tolist()  # the one host synchronisation
        neg_first_bad, stop, spread, timed = values[:4]
        window_seconds = time.perf_counter() - self.window.started
        waited = clock.take()
        losses = dict(zip(names, values[4 : 4 + len(names)], strict=True))
        record = {
            "step": step,
            "epoch": (step - 1) // self.steps_per_epoch,
            **losses,
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": self.window.steps * self.config.global_batch_size / window_seconds,
            "images_per_s_per_worker": self.window.steps * self.local_batch / window_seconds,
            "data_wait_share": waited / window_seconds,
            **dict(zip(stats, values[4 + len(names) :], strict=True)),
        }
        self.window.reset()
        if math.isfinite(-neg_first_bad):
            bad = int(-neg_first_bad)
            terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
            return self._guard_stop(f"step {bad}: non-finite loss or embedding ({terms})")
        self.state.history.append(record)
        if self.progress is not None:
            self.progress.update(
                step - self.progress.done,
                status=f"epoch {record['epoch'] + 1}/{self.config.epochs} "
                f"loss {record['loss']:.4f} {record['images_per_s']:.0f} img/s",
            )
        if reason := self.monitor.collapse(spread, step):
            return self._guard_stop(reason)
        if stop:
            self._checkpoint()
            if self.rank == 0:
                print(f"[pretrain] stopped at step {step} (checkpoint saved)", flush=True)
            return False
        # Every rank asks at every sync point (Ray Train agrees on one answer across ranks).
        if ray.train.get_preemption_info() is not None:
            self._checkpoint_before_preemption()
        if (self._is_checkpoint_step() or timed) and step < self.total_steps:
            self._checkpoint()
        return True

    def _checkpoint_due(self) -> bool:
        minutes = self.config.checkpoint_every_minutes
        return minutes is not None and time.monotonic() - self.last_checkpoint >= 60 * minutes

    def _checkpoint_before_preemption(self) -> None:
        """A node of the group is being drained: checkpoint now (uploaded before this returns)
        and train no further, so that no step is lost or trained twice; Ray Train restarts
        the group from this checkpoint when the node has gone or its deadline has passed,
        without the drained node (``FailureConfig.max_preemption_failures``: unlimited)."""
        self._checkpoint(upload_now=True)
        if self.rank == 0:
            print(
                f"[pretrain] a node is being drained: checkpoint at step {self.state.step}, "
                "waiting for the group to restart without it",
                flush=True,
            )
        while True:  # ended by Ray Train tearing the group down
            time.sleep(1.0)

    def _metrics(self) -> dict[str, Any]:
        last = self.state.history[-1] if self.state.history else {}
        return {
            "step": self.state.step,
            "epoch": self.state.step / self.steps_per_epoch,
            **{k: last[k] for k in ("loss", "images_per_s", "data_wait_share") if k in last},
        }

    def _checkpoint(self, *, final: bool = False, upload_now: bool = False) -> None:
        report(
            self.state,
            self.loader.state_dict(),
            self._metrics(),
            rank=self.rank,
            final=final,
            upload_now=upload_now,
        )
        self.window.started = time.perf_counter()
        self.last_checkpoint = time.monotonic()

    def _guard_stop(self, reason: str) -> bool:
        """Every rank returns at the same step without a checkpoint: the run ends (Ray Train
        retries failures, not returns), the last good checkpoint stays the latest, and the
        driver finds the reason in the job's ``RunControl``."""
        if self.rank == 0:
            print(f"[pretrain] stopped: {reason}", flush=True)
            ray.get(self.job.control.record_guard.remote(reason))
        return False

    def _finish(self) -> None:
        """The final checkpoint, with the published weights (also after a resume at the end)."""
        self._checkpoint(final=True)


def _log_samples(log: Path, step: int, epoch: int, world: int, batch: Batch) -> None:
    """Append the split indices this rank of ``world`` trained on at ``step``
    (``PretrainJob.sample_log``), with the process and the time: a group that restarts from
    a checkpoint trains some steps again, in new processes, and the latest group's counts."""
    log.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "step": step,
        "epoch": epoch,
        "world": world,
        "pid": os.getpid(),
        "time": time.time(),
        "indices": batch.indices.tolist(),
    }
    with log.open("a") as out:
        out.write(json.dumps(record) + "\n")


def train_worker(job: PretrainJob) -> None:
    # Ray Train logs every report and checkpoint at INFO; the stage prints its own progress.
    for name in ("", "ray", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(WORKER_COMPUTE_THREADS)
    Trainer(job).run()
