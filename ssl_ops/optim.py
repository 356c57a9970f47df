"""Optimizers and the learning-rate schedule used for pretraining.

LARS (You et al., 2017, https://arxiv.org/abs/1708.03888) as in the official VICReg/Barlow
code (``LARS`` in facebookresearch/vicreg ``main_vicreg.py`` and facebookresearch/barlowtwins
``main.py``): momentum 0.9, trust coefficient η = 0.001; biases and normalization parameters
(every parameter with ndim ≤ 1) get neither weight decay nor the trust-ratio adaptation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight matrix is scaled by η‖w‖/‖∇w + λw‖."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "eta": eta,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One step per parameter group with multi-tensor (``torch._foreach_*``) kernels, the
        trust ratios computed on the device (no host sync); the math is the official loop's."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            if not group["lars_exclude"]:
                updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
                param_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                trust = torch.where(
                    (param_norms > 0) & (update_norms > 0),
                    group["eta"] * param_norms / update_norms,
                    torch.ones_like(param_norms),
                )
                torch._foreach_mul_(updates, list(trust.unbind()))
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])


def _parameter_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_bias_and_norm: bool = False,
    fixed_lr: Iterable[torch.Tensor] = (),
) -> list[dict]:
    """Weights decay; biases and norm parameters (ndim ≤ 1) skip LARS adaptation and, unless
    ``decay_bias_and_norm`` (SimSiam, W-MSE, spectral: their official optimizers decay every
    parameter), weight decay too. Parameters in ``fixed_lr`` get groups of their own, marked
    ``fixed_lr`` for the scheduler (SimSiam's predictor, ``--fix-pred-lr``)."""
    fixed = {id(p) for p in fixed_lr}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = []
    for is_fixed in (False, True):
        params = [p for p in trainable if (id(p) in fixed) == is_fixed]
        if not params:
            continue
        groups += [
            {
                "params": [p for p in params if p.ndim > 1],
                "weight_decay": weight_decay,
                "fixed_lr": is_fixed,
            },
            {
                "params": [p for p in params if p.ndim <= 1],
                "weight_decay": weight_decay if decay_bias_and_norm else 0.0,
                "lars_exclude": True,
                "fixed_lr": is_fixed,
            },
        ]
    return groups


def _without_lars_flags(groups: list[dict]) -> list[dict]:
    return [{k: v for k, v in group.items() if k != "lars_exclude"} for group in groups]


OPTIMIZERS = {
    "lars": lambda groups, lr: LARS(groups, lr=lr),
    "sgd": lambda groups, lr: torch.optim.SGD(_without_lars_flags(groups), lr=lr, momentum=0.9),
    "adam": lambda groups, lr: torch.optim.Adam(_without_lars_flags(groups), lr=lr),
    "adamw": lambda groups, lr: torch.optim.AdamW(_without_lars_flags(groups), lr=lr),
}


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    bias_lr: float | None = None,
    decay_bias_and_norm: bool = False,
    fixed_lr: Iterable[torch.Tensor] = (),
) -> torch.optim.Optimizer:
    """Optimizer over weight / bias-and-norm groups (``_parameter_groups``); ``bias_lr`` gives
    the latter their own lr (Barlow Twins trains biases and BN parameters at 0.0048 against 0.2
    for weights)."""
    if name not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    groups = _parameter_groups(
        model, weight_decay, decay_bias_and_norm=decay_bias_and_norm, fixed_lr=fixed_lr
    )
    if bias_lr is not None:
        for group in groups:
            if group.get("lars_exclude"):
                group["lr"] = bias_lr
    return OPTIMIZERS[name](groups, lr)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, end_factor: float = 0.001):
    """LR multiplier: linear warmup from 0, then cosine decay to ``end_factor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return end_factor + (1 - end_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def warmup_step_decay(step: int, warmup_steps: int, drop_steps: list[int], factor: float) -> float:
    """LR multiplier: linear warmup from 0, then ×``factor`` at each of ``drop_steps`` (W-MSE's
    official ``MultiStepLR`` schedule, htdt/self-supervised train.py)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return factor ** sum(step >= drop for drop in drop_steps)
