"""Optimizers and the learning-rate schedule used for pretraining.

LARS (You et al., 2017, https://arxiv.org/abs/1708.03888) as in the official VICReg/Barlow
code: momentum 0.9, trust coefficient η = 0.001; biases and normalization parameters
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
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not group["lars_exclude"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(update)
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["eta"] * param_norm / update_norm,
                        torch.ones_like(param_norm),
                    )
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights decay; biases and norm parameters (ndim ≤ 1) do not, and skip LARS adaptation."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


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
) -> torch.optim.Optimizer:
    """Optimizer over weight / bias-and-norm groups; ``bias_lr`` gives the latter their own lr
    (Barlow Twins trains biases and BN parameters at 0.0048 against 0.2 for weights)."""
    if name not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    groups = _parameter_groups(model, weight_decay)
    if bias_lr is not None:
        groups[1]["lr"] = bias_lr
    return OPTIMIZERS[name](groups, lr)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, end_factor: float = 0.001):
    """LR multiplier: linear warmup from 0, then cosine decay to ``end_factor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return end_factor + (1 - end_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
