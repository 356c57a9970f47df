"""One training step and what it needs, without Ray: the method built from the spec, its
optimizer and hyperparameter schedules, bf16 autocast, and the step itself. The Ray Train worker
(``worker.py``) runs these; benchmarks (``benchmarks/gpu_check.py``) and tests call them
directly."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from sslpipe.ssl_ops import (
    Batch,
    MethodOutput,
    MethodSettings,
    Progress,
    SSLMethod,
    build_method,
)
from sslpipe.ssl_ops.optim import (
    HyperparameterScheduler,
    build_hyperparameter_scheduler,
    build_settings_optimizer,
)
from sslpipe.ssl_ops.sync_batchnorm import convert_to_global_batchnorm

from ..plugins import add_backbone_plugins
from ..stages.pretrain import PretrainConfig


def method_settings(config: PretrainConfig, num_samples: int) -> MethodSettings:
    """The method's settings: the card's defaults with the spec's fields, resolved here once
    (a method reads ``settings.options`` and ``settings.loss`` as they are)."""
    card, recipes = config.card(), config.recipes()
    options: dict[str, Any] = card.model_options(config.method_options)
    jigsaw = next((r.jigsaw for r in recipes if r.jigsaw is not None), None)
    if jigsaw is not None:
        options.setdefault("num_patches", jigsaw.grid**2)
    return MethodSettings(
        backbone=config.backbone,
        projector=config.projector_dims(),
        image_size=recipes[0].size,
        cifar_stem=config.cifar_stem,
        zero_init_residual=card.zero_init_residual,
        drop_path_rate=config.drop_path(),
        loss=config.loss_options(),
        options=options,
        separate_branches=config.separate_branches,
        branch_backbone=config.branch_backbone,
        num_samples=num_samples,
        seed=config.seed,
    )


def build_training_method(
    config: PretrainConfig, num_samples: int, world_size: int, device: torch.device
) -> SSLMethod:
    """The method on ``device``: batch norm over the global batch when several workers train,
    ``channels_last`` and cuDNN's autotuner on GPUs."""
    add_backbone_plugins()
    method = build_method(config.card(), method_settings(config, num_samples))
    if world_size > 1:
        convert_to_global_batchnorm(method)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # every batch has the same shape (drop_last)
    return method.to(device)


def build_training_optimizer(config: PretrainConfig, method: SSLMethod) -> torch.optim.Optimizer:
    return build_settings_optimizer(
        config.optimizer_settings(), method, fixed_lr=method.fixed_lr_parameters()
    )


def build_scheduler(
    config: PretrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> HyperparameterScheduler:
    """Warm-up then cosine or step decay of the lr (groups marked ``fixed_lr`` keep theirs),
    and the card's other hyperparameter schedules (``ssl_ops.optim``)."""
    return build_hyperparameter_scheduler(
        optimizer, config.optimizer_settings(), steps_per_epoch, config.epochs
    )


def autocast(config: PretrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and config.precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: torch.nn.Module,
    method: SSLMethod,
    views: list[torch.Tensor],
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: HyperparameterScheduler,
    config: PretrainConfig,
    progress: Progress,
) -> MethodOutput:
    """One optimizer step with the method's hooks (``ssl_ops.method``); ``model`` is
    ``method`` or its DDP wrapper."""
    method.on_step_start(progress)
    with autocast(config, views[0].device):
        output = model(views, batch)
    optimizer.zero_grad(set_to_none=True)
    output.losses["loss"].backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
    method.before_optimizer_step(progress)
    optimizer.step()
    scheduler.step()
    method.after_step(progress)
    return output
