"""The pretrain stage's run: a ``PretrainJob`` on a Ray Train ``TorchTrainer``.

The Ray run is named after the stage fingerprint, so rerunning the same command after a crash
resumes its latest checkpoint and a changed config starts afresh. SIGINT/SIGTERM set the
job's ``RunControl``: the workers checkpoint at their next sync point and return. A guard
(non-finite values, collapse) ends the run with its reason and is not retried. A
``num_workers`` range makes the group elastic (``elastic.py``): Ray Train resizes it between
min and max, each resize a restart from the latest checkpoint.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ray
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    Result,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from sslpipe.datasets.ingest import read_manifest, split_shards

from ..errors import UserError
from ..models.registry import ModelRegistry
from ..run.interrupt import stop_hook, stop_requested
from ..run.outputs import PRETRAIN_FILES, SAFETENSORS_WEIGHTS
from ..run.ray_runtime import ensure_ray
from ..stages.base import StageContext
from ..stages.pretrain import PretrainConfig, group_sizes
from .elastic import ElasticTorchTrainer
from .job import PretrainJob, RunControl
from .worker import train_worker


def run(config: PretrainConfig, ctx: StageContext) -> dict[str, Any]:
    manifest = read_manifest(ctx.inputs["data"])
    warm_start = _warm_start_weights(config)
    fewest, most = config.worker_range()
    ensure_ray(min_cpus=most * config.cpus_per_worker())
    # On the driver's node: a worker node that dies must not take the run's control with it.
    control = RunControl.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
    ).remote()
    job = PretrainJob(
        config=config,
        shards=[str(p.resolve()) for p in split_shards(ctx.inputs["data"], "train")],
        num_samples=manifest["splits"]["train"]["num_samples"],
        num_classes=manifest["num_classes"],
        data_fingerprint=manifest["source_fingerprint"],
        warm_start=warm_start,
        control=control,
        sample_log=os.environ.get("SSLPIPE_SAMPLE_LOG"),
        step_pause_s=float(os.environ.get("SSLPIPE_STEP_PAUSE_S", "0")),
    )
    trainer = ElasticTorchTrainer(
        functools.partial(train_worker, job),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers if fewest == most else (fewest, most),
            use_gpu=config.use_gpu,
            resources_per_worker={
                "CPU": config.cpus_per_worker(),
                **({"GPU": 1} if config.use_gpu else {}),
            },
            placement_strategy=config.placement_strategy,
            elastic_resize_monitor_interval_s=config.resize_check_seconds,
        ),
        group_sizes=group_sizes(config.global_batch_size, fewest, most),
        run_config=RunConfig(
            name=f"{config.name}-{ctx.run_id}",
            storage_path=config.storage_path or str((ctx.workdir / "_ray").resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    try:
        with stop_hook(lambda: control.request_stop.remote()):
            result = _fit_off_the_main_thread(trainer)
        guard = ray.get(control.guard.remote())
    except TrainingFailedError as error:
        raise UserError(f"stage {config.name!r}: {_root_cause(error)}") from None
    finally:
        ray.kill(control)
    if guard is not None:
        raise UserError(f"stage {config.name!r}: stopped by a guard at {guard}")
    if stop_requested():
        raise KeyboardInterrupt(f"stopped at step {result.metrics['step']} (checkpoint kept)")
    with result.checkpoint.as_directory() as checkpoint_dir:
        for name in PRETRAIN_FILES:
            shutil.copy(Path(checkpoint_dir) / name, ctx.out_dir / name)
    return {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}


def _fit_off_the_main_thread(trainer: TorchTrainer) -> Result:
    """``trainer.fit()`` in a thread while the main thread waits: called on the main thread,
    Ray Train replaces the SIGINT handler with its own abort (no checkpoint, exit 1), so that
    Ctrl-C would not stop at a checkpoint as SIGTERM does (``run/interrupt.py``)."""
    outcome: Future[Result] = Future()

    def fit() -> None:
        try:
            outcome.set_result(trainer.fit())
        except BaseException as error:  # handed to the main thread, which raises it
            outcome.set_exception(error)

    threading.Thread(target=fit, name="ray-train-fit", daemon=True).start()
    return outcome.result()


def _warm_start_weights(config: PretrainConfig) -> str | None:
    """The promoted backbone's weights file, resolved now so a promotion mid-run changes
    nothing; None without ``warm_start`` or before the registry's first promotion."""
    if config.warm_start is None:
        return None
    latest = ModelRegistry(config.warm_start).latest()
    if latest is None:
        print(f"[{config.name}] {config.warm_start} has no promoted model yet: random init")
        return None
    weights = latest / SAFETENSORS_WEIGHTS
    if not weights.is_file():
        raise UserError(f"stage {config.name!r}: warm_start: {weights} does not exist")
    print(f"[{config.name}] warm start from {latest}", flush=True)
    return str(weights)


def _root_cause(error: BaseException) -> str:
    """The last line of the worker's error (Ray wraps it in several layers)."""
    text = str(error).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), repr(error))
