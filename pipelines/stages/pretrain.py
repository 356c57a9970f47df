"""Pretrain stage: a self-supervised method trained on a Ray Train ``TorchTrainer``.

The driver side lives here; what each worker runs is in ``pipelines/pretrain_worker.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from sslpipe.datasets.ingest import read_manifest, split_shards
from sslpipe.datasets.recipes import (
    PRESETS,
    ViewOverrides,
    ViewRecipe,
    apply_overrides,
    get_recipe,
)
from sslpipe.ssl_ops import BACKBONES, METHODS, get_method
from sslpipe.ssl_ops.optim import OPTIMIZERS

from ..errors import UserError, did_you_mean
from ..interrupt import stop_hook, stop_requested
from ..plugins import add_plugins
from ..ray_runtime import ensure_ray
from ..registry import ModelRegistry
from .base import StageConfig, StageContext

add_plugins("sslpipe.methods", METHODS)
add_plugins("sslpipe.backbones", BACKBONES)
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]
BackboneName = Literal[tuple(BACKBONES)]  # type: ignore[valid-type]
RecipeName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
OptimizerName = Literal[tuple(OPTIMIZERS)]  # type: ignore[valid-type]

STOP_FILE = "stop"  # <workdir>/.<run>.stop asks the workers to checkpoint and return
WARM_START_WEIGHTS = "backbone.safetensors"  # written by the export stage
MODEL_FILES = ("backbone.pt", "encoder.pt", "model.json", "history.jsonl")


class PretrainConfig(StageConfig):
    """Unset method-dependent fields take the method's defaults from ``ssl_ops.METHODS``."""

    inputs: ClassVar[dict[str, str]] = {"data": "ingest"}

    type: Literal["pretrain"]
    data: str = Field(description="name of the ingest stage to train on")
    method: MethodName = "vicreg"
    backbone: BackboneName = "resnet18"
    cifar_stem: bool = False
    projector: list[int] | None = Field(None, description="projector widths; method default")
    views: RecipeName | None = Field(None, description="view recipe preset; method default")
    view_overrides: ViewOverrides = Field(  # type: ignore[valid-type]
        default_factory=ViewOverrides, description="recipe fields to change on every view"
    )
    epochs: int = Field(100, gt=0)
    global_batch_size: int = Field(256, gt=1)
    optimizer: OptimizerName | None = None
    base_lr: float | None = Field(None, gt=0, description="lr = base_lr × global_batch / 256")
    weight_decay: float | None = Field(None, ge=0)
    warmup_epochs: float = Field(10, ge=0)
    loss: dict[str, int | float] = Field(default_factory=dict, description="objective keyword args")
    num_workers: int = Field(2, gt=0)
    use_gpu: bool = False
    dali_threads: int = Field(2, gt=0)
    seed: int = 0
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast on GPU")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")
    log_every_steps: int = Field(10, gt=0)
    checkpoint_every_steps: int | None = Field(None, gt=0, description="and at epoch ends")
    checkpoints_to_keep: int = Field(2, gt=0)
    max_failures: int = Field(0, ge=0, description="worker-group restarts from a checkpoint")
    monitor_every_steps: int = Field(50, gt=0, description="RankMe, online probe, collapse")
    collapse_std_threshold: float = Field(
        0.05, ge=0, description="stop when √D·std(normalised z) stays below this; 0 disables"
    )
    collapse_patience: int = Field(3, gt=0, description="consecutive low-std checks to stop")
    storage_path: str | None = Field(
        None,
        description="where Ray Train keeps this stage's checkpoints: a path every node sees or "
        "an s3:// / gs:// URI (pyarrow); default <workdir>/_ray",
    )
    warm_start: str | None = Field(
        None,
        description="model registry whose latest promoted backbone initialises the backbone "
        "(random init while it has none); not part of the fingerprint",
    )

    @field_validator("loss")
    @classmethod
    def _loss_options_exist(cls, loss: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "method" not in info.data:  # the method itself is invalid: reported on its own
            return loss
        method = info.data["method"]
        allowed = get_method(method).loss_options()
        for key in loss:
            if key not in allowed:
                raise ValueError(
                    f"{key!r} is not an option of {method}'s loss{did_you_mean(key, allowed)} "
                    f"(allowed: {', '.join(allowed)})"
                )
        return loss

    @model_validator(mode="after")
    def _views_are_valid(self) -> PretrainConfig:
        self.recipes()
        return self

    def recipes(self) -> list[ViewRecipe]:
        recipes = get_recipe(self.views or get_method(self.method).views)
        return apply_overrides(recipes, self.view_overrides.model_dump(exclude_none=True))

    def resolved(self) -> dict[str, Any]:
        """Optimizer settings with the method defaults filled in."""
        method = get_method(self.method)
        return {
            "projector": list(self.projector or method.projector),
            "optimizer": self.optimizer or method.optimizer,
            "base_lr": self.base_lr if self.base_lr is not None else method.base_lr,
            "weight_decay": (
                self.weight_decay if self.weight_decay is not None else method.weight_decay
            ),
            # The method's separate bias/norm lr applies only with its own base_lr.
            "bias_lr": method.lr_biases if self.base_lr is None else None,
        }


def run(config: PretrainConfig, ctx: StageContext) -> dict[str, Any]:
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train.torch import TorchTrainer

    from ..pretrain_worker import train_worker

    if config.global_batch_size % config.num_workers:
        raise UserError(
            f"stage {config.name!r}: global_batch_size {config.global_batch_size} is not "
            f"divisible by num_workers {config.num_workers}"
        )
    manifest = read_manifest(ctx.inputs["data"])
    warm_start = _warm_start_weights(config)
    ensure_ray()
    # Named by the stage fingerprint: a rerun after a crash resumes this run's latest
    # checkpoint, a changed config starts afresh.
    run_name = f"{config.name}-{ctx.run_id}"
    stop_file = (ctx.workdir / f".{run_name}.{STOP_FILE}").resolve()
    stop_file.unlink(missing_ok=True)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "shards": [str(p.resolve()) for p in split_shards(ctx.inputs["data"], "train")],
            "num_samples": manifest["splits"]["train"]["num_samples"],
            "num_classes": manifest["num_classes"],
            "data_fingerprint": manifest["source_fingerprint"],
            "warm_start": warm_start,
            "stop_file": str(stop_file),
        },
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if config.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=config.storage_path or str((ctx.workdir / "_ray").resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=config.max_failures),
        ),
    )
    try:
        with stop_hook(lambda: _touch(stop_file)):
            result = trainer.fit()
    except TrainingFailedError as error:
        raise UserError(f"stage {config.name!r}: {_root_cause(error)}") from None
    if stop_requested():
        stop_file.unlink(missing_ok=True)
        raise KeyboardInterrupt(f"{stop_requested()}: stopped at step {result.metrics['step']}")
    with result.checkpoint.as_directory() as checkpoint_dir:
        for name in MODEL_FILES:
            shutil.copy(Path(checkpoint_dir) / name, ctx.out_dir / name)
    return {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}


def _warm_start_weights(config: PretrainConfig) -> str | None:
    """The promoted backbone's weights file, resolved now so a promotion mid-run changes
    nothing; None without ``warm_start`` or before the registry's first promotion."""
    if config.warm_start is None:
        return None
    latest = ModelRegistry(config.warm_start).latest()
    if latest is None:
        print(f"[{config.name}] {config.warm_start} has no promoted model yet: random init")
        return None
    weights = latest / WARM_START_WEIGHTS
    if not weights.is_file():
        raise UserError(f"stage {config.name!r}: warm_start: {weights} does not exist")
    print(f"[{config.name}] warm start from {latest}", flush=True)
    return str(weights)


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def _root_cause(error: BaseException) -> str:
    """The last line of the worker's error (Ray wraps it in several layers)."""
    text = str(error).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), repr(error))
