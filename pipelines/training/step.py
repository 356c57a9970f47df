"""One training step and what it needs, without Ray: the method built from the spec, its
optimizer and lr schedule, bf16 autocast, and the step itself. The Ray Train worker
(``worker.py``) runs these; benchmarks (``benchmarks/gpu_check.py``) and tests call them
directly."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from sslpipe.ssl_ops import (
    BACKBONES,
    Batch,
    MethodOutput,
    MethodSettings,
    SSLMethod,
    build_method,
)
from sslpipe.ssl_ops.optim import build_optimizer, warmup_cosine, warmup_step_decay
from sslpipe.ssl_ops.sync_batchnorm import convert_to_global_batchnorm

from ..plugins import add_plugins
from ..stages.pretrain import PretrainConfig


def method_settings(config: PretrainConfig, num_samples: int) -> MethodSettings:
    """The method's settings from the spec, with the card's defaults filled in."""
    options: dict[str, Any] = dict(config.method_options)
    jigsaw = next((r.jigsaw for r in config.recipes() if r.jigsaw is not None), None)
    if jigsaw is not None:
        options.setdefault("num_patches", jigsaw.grid**2)
    return MethodSettings(
        backbone=config.backbone,
        projector=config.projector_dims(),
        cifar_stem=config.cifar_stem,
        zero_init_residual=config.card().zero_init_residual,
        loss=dict(config.loss),
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
    add_plugins("sslpipe.backbones", BACKBONES)
    method = build_method(config.card(), method_settings(config, num_samples))
    if world_size > 1:
        convert_to_global_batchnorm(method)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # every batch has the same shape (drop_last)
    return method.to(device)


def build_training_optimizer(config: PretrainConfig, method: SSLMethod) -> torch.optim.Optimizer:
    return build_optimizer(
        config.optimizer_name(),
        method,
        lr=config.learning_rate(),
        weight_decay=config.weight_decay_value(),
        bias_lr=config.bias_learning_rate(),
        decay_bias_and_norm=config.card().decay_bias_and_norm,
        fixed_lr=method.fixed_lr_parameters(),
    )


def build_scheduler(
    config: PretrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine or step decay, for every parameter group but those marked
    ``fixed_lr``, which keep their base lr."""
    total = steps_per_epoch * config.epochs
    warmup = round(config.warmup_epochs_value() * steps_per_epoch)
    drops = [(config.epochs - e) * steps_per_epoch for e in config.lr_drop_epochs]

    def scheduled(step: int) -> float:
        if config.schedule_name() == "step":
            return warmup_step_decay(step, warmup, drops, config.lr_drop_factor)
        return warmup_cosine(step, total, warmup)

    def constant(step: int) -> float:
        return 1.0

    lambdas = [constant if g.get("fixed_lr") else scheduled for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


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
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: PretrainConfig,
    step: int,
    total_steps: int,
) -> MethodOutput:
    """One optimizer step (``step`` is 1-based); ``model`` is ``method`` or its DDP wrapper."""
    with autocast(config, views[0].device):
        output = model(views, batch)
    optimizer.zero_grad(set_to_none=True)
    output.losses["loss"].backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
    optimizer.step()
    scheduler.step()
    method.after_step(step, total_steps)
    return output
