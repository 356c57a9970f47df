"""Pretrain stage: a self-supervised method trained on a Ray Train ``TorchTrainer``.

This module is the stage's config: every field, its default and its meaning. Unset
method-dependent fields take the method's defaults from ``ssl_ops.catalog``; everything that can
be known from the spec alone (the batch splits evenly over the workers, the method gets the
views it needs, the loss options exist) is checked here, so ``sslpipe validate`` reports it.
Running it is ``pipelines/training/`` (``driver.run`` launches, ``worker`` is each worker's loop).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sslpipe.datasets.recipes import ViewEntry, ViewOverride, ViewRecipe, Views, resolve_views
from sslpipe.ssl_ops.catalog import (
    BACKBONE_NAMES,
    LR_SCHEDULES,
    METHODS,
    OPTIMIZER_NAMES,
    PARAMETER_GROUPS,
    HyperSchedule,
    MethodCard,
    OptimizerSettings,
    get_method,
    vit_patch_size,
)

from ..errors import did_you_mean
from ..models.registry import ModelRegistry
from ..plugins import add_plugins, plugin_names
from .base import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LR,
    MAX_WORKERS,
    MachineProblem,
    ResourceRequest,
    ShardReaderConfig,
    folder_problem,
)

# Plugin methods are catalog cards (plain data); plugin backbones are only named here and
# loaded by the training worker.
add_plugins("sslpipe.methods", METHODS)
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]
BackboneName = Literal[tuple([*BACKBONE_NAMES, *plugin_names("sslpipe.backbones")])]  # type: ignore[valid-type]
OptimizerName = Literal[OPTIMIZER_NAMES]  # type: ignore[valid-type]
ScheduleName = Literal[LR_SCHEDULES]  # type: ignore[valid-type]


class WorkerRange(BaseModel):
    """An elastic worker group (Ray Train's ``ScalingConfig(num_workers=(min, max))``): it
    starts once ``min`` workers fit, grows toward ``max`` as room appears and goes on with fewer
    when a node is lost, each resize a restart from the latest checkpoint. It takes only sizes
    that divide ``global_batch_size`` (``group_sizes``), so every size trains the same global
    batches: the lr, the schedules and the statistics over the global batch keep their
    meaning, and the data continues where the group left it (``loaders.EpochPlan``)."""

    model_config = ConfigDict(extra="forbid")

    min: int = Field(gt=0, le=MAX_WORKERS, description="the fewest workers the run trains with")
    max: int = Field(gt=0, le=MAX_WORKERS, description="the most workers the run grows to (≥ min)")


def group_sizes(global_batch: int, low: int, high: int) -> list[int]:
    """The worker counts from ``low`` to ``high`` that split ``global_batch`` evenly: the
    sizes an elastic group takes (Ray's choice rounded down to one of them)."""
    return [size for size in range(low, high + 1) if global_batch % size == 0]


class PretrainConfig(ShardReaderConfig):
    """Unset method-dependent fields take the method's defaults (``ssl_ops.catalog``)."""

    gang: ClassVar[bool] = True  # a Ray Train worker group: every worker at once
    inputs: ClassVar[dict[str, str]] = {"data": "ingest"}

    type: Literal["pretrain"]
    data: str = Field(description="name of the ingest stage to train on")
    method: MethodName = Field("vicreg", description="the method (ssl_ops.catalog)")
    method_options: dict[str, int | float | bool | str | list[int]] = Field(
        default_factory=dict,
        description="model settings of the method (e.g. predictor widths, target momentum)",
    )
    backbone: BackboneName = Field("resnet18", description="the network trained and exported")
    cifar_stem: bool = Field(
        False, description="ResNet stem for 32 px images: 3×3 stride-1 conv, no max-pool"
    )
    separate_branches: bool = Field(
        False,
        description="two branches that share no weights (VICReg, Barlow Twins): view 1 goes "
        "through a second backbone and projector",
    )
    branch_backbone: BackboneName | None = Field(
        None, description="the second branch's backbone with separate_branches (default: backbone)"
    )
    projector: list[Annotated[int, Field(gt=0, le=1 << 16)]] | None = Field(
        None, description="projector widths; method default"
    )
    views: Views | None = Field(
        None,
        validate_default=True,
        description="a view preset, or a list of views: {preset, index, repeat, fields to "
        "change} or a recipe spelled out; method default",
    )
    view_overrides: ViewOverride = Field(
        default_factory=ViewOverride,
        validate_default=True,
        description="recipe fields to change on every view, or with view: i on view i",
    )
    epochs: int = Field(100, gt=0, le=MAX_EPOCHS, description="passes over the train split")
    global_batch_size: int = Field(
        256,
        gt=1,
        le=MAX_BATCH,
        description="images per optimizer step over all workers (each takes an equal share)",
    )
    optimizer: OptimizerName | None = Field(None, description="method default")
    base_lr: float | None = Field(
        None, gt=0, le=MAX_LR, description="lr = base_lr × global_batch / 256"
    )
    weight_decay: float | None = Field(None, ge=0, le=1, description="method default")
    weight_decay_end: float | None = Field(
        None, ge=0, description="cosine from weight_decay to this over the run; method default"
    )
    drop_path_rate: float | None = Field(
        None, ge=0, lt=1, description="ViT backbones: stochastic depth rate; method default"
    )
    warmup_epochs: float | None = Field(None, ge=0, description="linear warm-up; method default")
    lr_schedule: ScheduleName | None = Field(
        None,
        description="after warm-up: cosine decay to the method's end lr, or step decay "
        "(×lr_drop_factor at each of lr_drop_epochs); method default",
    )
    lr_drop_epochs: list[Annotated[int, Field(gt=0)]] = Field(
        [50, 25], description="step schedule: drop this many epochs before the end (W-MSE)"
    )
    lr_drop_factor: float = Field(0.2, gt=0, le=1, description="step schedule: lr multiplier")
    loss: dict[str, int | float | bool | str] = Field(
        default_factory=dict,
        validate_default=True,
        description="objective options (method defaults; the method's card lists them)",
    )
    num_workers: Annotated[int, Field(gt=0, le=MAX_WORKERS)] | WorkerRange = Field(
        2,
        description="Ray Train workers (one GPU each with use_gpu): a number for a fixed group, "
        "or {min: m, max: n} for an elastic one that resizes with the cluster",
    )
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK",
        description="Ray placement of the workers: PACK fills a node before the next, SPREAD "
        "puts them on as many nodes as it can (a lost node takes fewer workers with it)",
    )
    resize_check_seconds: float = Field(
        60.0,
        gt=0,
        description="elastic groups: how often Ray Train looks for room to grow the group (a "
        "resize restarts it from the latest checkpoint)",
    )
    use_gpu: bool = Field(False, description="one GPU per worker: DALI on it, bf16, channels_last")
    seed: int = Field(0, ge=0, lt=2**32, description="weights, data order and augmentations")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast on GPU")
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm")
    log_every_steps: int = Field(
        10,
        gt=0,
        description="history record, progress line, guard checks and stop-request check "
        "every this many steps (the only host synchronisations of the loop)",
    )
    checkpoint_every_epochs: int = Field(1, gt=0, description="checkpoint at every n-th epoch end")
    checkpoint_every_steps: int | None = Field(None, gt=0, description="and every n steps")
    checkpoint_every_minutes: float | None = Field(
        None,
        gt=0,
        description="and at the first sync point this many minutes after the last checkpoint "
        "(uploads to storage_path run in the background)",
    )
    checkpoints_to_keep: int = Field(2, gt=0, description="the newest kept in storage_path")
    max_failures: int = Field(0, ge=0, description="worker-group restarts from a checkpoint")
    monitor_every_steps: int = Field(50, gt=0, description="RankMe, online probe, collapse")
    collapse_std_threshold: float = Field(
        0.05, ge=0, description="stop when √D·std(normalised z) stays below this; 0 disables"
    )
    collapse_patience: int = Field(3, gt=0, description="consecutive low-std checks to stop")
    synthetic_data: bool = Field(
        False,
        description="replay the first batch from device memory instead of reading data: the "
        "step time without the loader (benchmarks)",
    )
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

    @field_validator("method_options")
    @classmethod
    def _method_options_exist(cls, options: dict[str, Any], info: ValidationInfo) -> dict:
        if card := _card(info):
            _check_names(options, card.options, f"an option of {card.name}")
        return options

    @field_validator("separate_branches")
    @classmethod
    def _branches_allowed(cls, separate: bool, info: ValidationInfo) -> bool:
        if separate and (card := _card(info)) and not card.separate_branches:
            allowed = ", ".join(n for n, c in METHODS.items() if c.separate_branches)
            raise ValueError(f"{card.name} trains one shared branch (separate: {allowed})")
        return separate

    @field_validator("branch_backbone")
    @classmethod
    def _branch_needs_separation(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is not None and not info.data.get("separate_branches"):
            raise ValueError("set separate_branches: true to give the second branch a backbone")
        return name

    @field_validator("loss")
    @classmethod
    def _loss_options_exist(cls, loss: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        card = _card(info)
        if card is None:
            return loss
        _check_names(loss, card.loss, f"an option of {card.name}'s loss")
        options = card.loss_kwargs(loss)
        if "w_size" in options:
            dims = info.data.get("projector") or card.projector
            _check_whitening(int(options["w_size"]), info.data.get("global_batch_size"), dims[-1])
        return loss

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_within_the_run(cls, warmup: float | None, info: ValidationInfo) -> float | None:
        epochs = info.data.get("epochs")
        if warmup is not None and epochs is not None and warmup >= epochs:
            raise ValueError(
                f"warm-up of {warmup:g} epochs must be shorter than the run (epochs: {epochs})"
            )
        return warmup

    @field_validator("lr_drop_epochs")
    @classmethod
    def _drops_within_the_run(cls, drops: list[int], info: ValidationInfo) -> list[int]:
        epochs = info.data.get("epochs")
        outside = [drop for drop in drops if epochs is not None and drop >= epochs]
        if outside:
            raise ValueError(
                f"drops {outside} epochs before the end fall outside the run (epochs: {epochs}); "
                f"each must be below {epochs}"
            )
        return drops

    @field_validator("num_workers")
    @classmethod
    def _batch_splits_evenly(
        cls, workers: int | WorkerRange, info: ValidationInfo
    ) -> int | WorkerRange:
        batch = info.data.get("global_batch_size")
        if batch is None:
            return workers
        if isinstance(workers, int):
            if batch % workers:
                raise ValueError(
                    f"global_batch_size {batch} is not divisible by num_workers {workers}; each "
                    f"worker takes an equal share (e.g. {batch - batch % workers} or "
                    f"{batch + workers - batch % workers})"
                )
            return workers
        if workers.max < workers.min:
            raise ValueError(f"max {workers.max} is below min {workers.min}")
        allowed = group_sizes(batch, workers.min, workers.max)
        if workers.min not in allowed or workers.max not in allowed:
            listing = ", ".join(map(str, allowed)) or "none"
            raise ValueError(
                f"{{min: {workers.min}, max: {workers.max}}}: an elastic group takes only sizes "
                f"that divide global_batch_size {batch} (each worker an equal share), and min "
                f"and max must be such sizes; sizes allowed in this range: {listing}"
            )
        return workers

    @field_validator("views")
    @classmethod
    def _views_fit_the_method(
        cls, views: list[ViewEntry] | None, info: ValidationInfo
    ) -> list[ViewEntry] | None:
        card = _card(info)
        if card is None:
            return views
        recipes = resolve_views(card.views if views is None else views)
        given = _views_name(views, card)
        images = [r for r in recipes if r.jigsaw is None]
        if card.jigsaw and len(images) == len(recipes):
            raise ValueError(f"{card.name} needs a jigsaw view (e.g. views: pirl)")
        if not card.jigsaw and len(images) < len(recipes):
            raise ValueError(f"{given} include a jigsaw view, which {card.name} cannot use")
        if card.num_views is not None and len(images) != card.num_views:
            raise ValueError(
                f"{card.name} takes {card.num_views} image view(s), {given} give {len(images)}"
            )
        if card.num_views is None and len(images) < 2:
            raise ValueError(f"{card.name} needs at least 2 views, {given} give 1")
        if info.data.get("separate_branches") and len(recipes) != 2:
            raise ValueError(
                f"separate_branches needs exactly 2 views, {given} give {len(recipes)}"
            )
        return views

    @field_validator("view_overrides")
    @classmethod
    def _overrides_fit_the_views(
        cls, overrides: ViewOverride, info: ValidationInfo
    ) -> ViewOverride:
        card = _card(info)
        if card is not None and "views" in info.data:
            views = info.data["views"]
            recipes = overrides.apply(resolve_views(card.views if views is None else views))
            _crops_fit(card, recipes, info.data.get("backbone"), _views_name(views, card))
        return overrides

    def card(self) -> MethodCard:
        """The method's card, with its values for a run of ``epochs`` (``for_epochs``)."""
        return get_method(self.method).for_epochs(self.epochs)

    def recipes(self) -> list[ViewRecipe]:
        """The views the loader makes: ``views`` (or the method's) with ``view_overrides``."""
        views = self.card().views if self.views is None else self.views
        return resolve_views(views, self.view_overrides)

    def projector_dims(self) -> tuple[int, ...]:
        return tuple(self.projector or self.card().projector)

    def loss_options(self) -> dict[str, Any]:
        return self.card().loss_kwargs(self.loss)

    def optimizer_name(self) -> str:
        return self.optimizer or self.card().optimizer

    def schedule_name(self) -> str:
        return self.lr_schedule or self.card().lr_schedule

    def warmup_epochs_value(self) -> float:
        return self.card().warmup_epochs if self.warmup_epochs is None else self.warmup_epochs

    def weight_decay_value(self) -> float:
        return self.card().weight_decay if self.weight_decay is None else self.weight_decay

    def learning_rate(self) -> float:
        """``base_lr × global_batch / 256`` for methods that scale linearly, else ``base_lr``."""
        base_lr = self.card().base_lr if self.base_lr is None else self.base_lr
        return self._scaled(base_lr)

    def bias_learning_rate(self) -> float | None:
        """The method's own lr for biases and norm parameters; only with its own base_lr."""
        card = self.card()
        if card.lr_biases is None or self.base_lr is not None:
            return None
        return self._scaled(card.lr_biases)

    def drop_path(self) -> float:
        return self.card().drop_path_rate if self.drop_path_rate is None else self.drop_path_rate

    def optimizer_settings(self) -> OptimizerSettings:
        """The optimizer and its schedules: the card's defaults with this spec's fields."""
        card = self.card()
        schedules = card.schedules
        end = card.weight_decay_end if self.weight_decay_end is None else self.weight_decay_end
        if end is not None:
            groups = PARAMETER_GROUPS if card.decay_bias_and_norm else ("weights",)
            schedules = (HyperSchedule("weight_decay", end, groups), *schedules)
        lr = self.learning_rate()
        return OptimizerSettings(
            name=self.optimizer_name(),
            lr=lr,
            bias_lr=self.bias_learning_rate(),
            weight_decay=self.weight_decay_value(),
            decay_bias_and_norm=card.decay_bias_and_norm,
            betas=card.betas,
            lr_schedule=self.schedule_name(),
            warmup_epochs=self.warmup_epochs_value(),
            lr_end=card.lr_end_factor * lr + card.min_lr,
            lr_drop_epochs=tuple(self.lr_drop_epochs),
            lr_drop_factor=self.lr_drop_factor,
            schedules=schedules,
        )

    def _scaled(self, base_lr: float) -> float:
        if self.card().lr_scaling == "linear":
            return base_lr * self.global_batch_size / 256
        return base_lr

    def worker_range(self) -> tuple[int, int]:
        """(min, max) workers: equal for a fixed group."""
        workers = self.num_workers
        return (workers, workers) if isinstance(workers, int) else (workers.min, workers.max)

    def resource_request(self) -> ResourceRequest:
        """What must fit for the run to start: ``min`` workers of an elastic group."""
        return replace(super().resource_request(), workers=self.worker_range()[0])

    def machine_problems(self) -> list[MachineProblem]:
        problems = []
        if self.warm_start is not None:
            registry = Path(self.warm_start)
            if registry.exists() and not ModelRegistry(registry).is_registry():
                message = f"{registry} is not a model registry (no versions, latest or history)"
                problems.append(MachineProblem(("warm_start",), message, 2))
        if self.storage_path is not None and "://" not in self.storage_path:
            found = folder_problem(Path(self.storage_path), ("storage_path",), "storage_path")
            problems += [found] if found else []
        return problems


def _views_name(views: list[ViewEntry] | None, card: MethodCard) -> str:
    """How a message names the views: by the preset's name when they are one whole preset."""
    if views is None:
        return f"its default views {card.views!r}"
    if len(views) == 1 and views[0].preset and not views[0].given("preset"):
        return f"the views of {views[0].preset!r}"
    return "the views"


def _crops_fit(
    card: MethodCard, recipes: list[ViewRecipe], backbone: str | None, given: str
) -> None:
    """The views' sizes suit the method and the backbone: a ViT's patches tile every view,
    and a method with global crops gets them first, of one size, no view larger."""
    sizes = [recipe.output_size for recipe in recipes]
    patch = vit_patch_size(backbone) if backbone else None
    if patch and any(size % patch for size in sizes):
        raise ValueError(
            f"{given} have sizes {sizes}: {backbone} needs multiples of its {patch}-px patch"
        )
    first = sizes[: card.global_views]
    if first and (len(set(first)) > 1 or max(sizes) > first[0]):
        raise ValueError(
            f"{card.name} takes its {card.global_views} global crops first, of one size and "
            f"no smaller than any other view; {given} have sizes {sizes}"
        )


def _card(info: ValidationInfo) -> MethodCard | None:
    """The method's card, or None when the method itself is invalid (reported on its own)."""
    method = info.data.get("method")
    return METHODS.get(method) if method else None


def _check_names(given: dict[str, Any], allowed: Any, what: str) -> None:
    names = sorted(allowed)
    for key in given:
        if key not in allowed:
            listing = ", ".join(names) if names else "none"
            hint = did_you_mean(key, names)
            raise ValueError(f"{key!r} is not {what}{hint} (allowed: {listing})")


def _check_whitening(w_size: int, batch: int | None, dim: int) -> None:
    """W-MSE whitens sub-batches of ``w_size`` rows of the global batch (``wmse_loss``)."""
    if batch is not None and batch % w_size:
        raise ValueError(
            f"w_size {w_size} must divide global_batch_size {batch} (W-MSE whitens sub-batches "
            "of w_size samples)"
        )
    if w_size <= dim:
        raise ValueError(
            f"w_size {w_size} must exceed the embedding dimension {dim} (the projector's last "
            "width), or the sub-batch covariance is singular"
        )
