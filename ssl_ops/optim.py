"""Optimizers and the per-step schedules of their hyperparameters used for pretraining.

LARS (You et al., 2017, https://arxiv.org/abs/1708.03888) as in the official VICReg/Barlow
code (``LARS`` in facebookresearch/vicreg ``main_vicreg.py`` and facebookresearch/barlowtwins
``main.py``): momentum 0.9, trust coefficient η = 0.001; biases and normalization parameters
(every parameter with ndim ≤ 1) get neither weight decay nor the trust-ratio adaptation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .catalog import OptimizerSettings


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
    parameter), weight decay too — the rule of DINO's ``utils.get_params_groups`` and of the
    timm ``add_weight_decay`` MAE's ``main_pretrain.py`` calls. Each group is named
    (``catalog.PARAMETER_GROUPS``). Parameters in ``fixed_lr`` get groups of their own, marked
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
                "name": "weights",
                "weight_decay": weight_decay,
                "fixed_lr": is_fixed,
            },
            {
                "params": [p for p in params if p.ndim <= 1],
                "name": "biases_and_norms",
                "weight_decay": weight_decay if decay_bias_and_norm else 0.0,
                "lars_exclude": True,
                "fixed_lr": is_fixed,
            },
        ]
    return groups


def _without_lars_flags(groups: list[dict]) -> list[dict]:
    return [{k: v for k, v in group.items() if k != "lars_exclude"} for group in groups]


OptimizerBuilder = Callable[[list[dict], float, tuple[float, float]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerBuilder] = {
    "lars": lambda groups, lr, betas: LARS(groups, lr=lr),
    "sgd": lambda groups, lr, betas: torch.optim.SGD(
        _without_lars_flags(groups), lr=lr, momentum=0.9
    ),
    "adam": lambda groups, lr, betas: torch.optim.Adam(
        _without_lars_flags(groups), lr=lr, betas=betas
    ),
    "adamw": lambda groups, lr, betas: torch.optim.AdamW(
        _without_lars_flags(groups), lr=lr, betas=betas
    ),
}


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    bias_lr: float | None = None,
    decay_bias_and_norm: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    fixed_lr: Iterable[torch.Tensor] = (),
) -> torch.optim.Optimizer:
    """Optimizer over weight / bias-and-norm groups (``_parameter_groups``); ``bias_lr`` gives
    the latter their own lr (Barlow Twins trains biases and BN parameters at 0.0048 against 0.2
    for weights); ``betas`` are Adam's and AdamW's (MAE: 0.9, 0.95)."""
    if name not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    groups = _parameter_groups(
        model, weight_decay, decay_bias_and_norm=decay_bias_and_norm, fixed_lr=fixed_lr
    )
    if bias_lr is not None:
        for group in groups:
            if group.get("lars_exclude"):
                group["lr"] = bias_lr
    return OPTIMIZERS[name](groups, lr, betas)


def build_settings_optimizer(
    settings: OptimizerSettings, model: nn.Module, fixed_lr: Iterable[torch.Tensor] = ()
) -> torch.optim.Optimizer:
    """``build_optimizer`` as ``settings`` say."""
    return build_optimizer(
        settings.name,
        model,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        bias_lr=settings.bias_lr,
        decay_bias_and_norm=settings.decay_bias_and_norm,
        betas=settings.betas,
        fixed_lr=fixed_lr,
    )


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at ``total_steps`` (and after) along a half cosine: DINO's
    ``utils.cosine_scheduler`` without warm-up."""
    progress = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, end_factor: float = 0.001):
    """LR multiplier: linear warmup from 0, then cosine decay to ``end_factor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, 1.0, end_factor)


def warmup_step_decay(step: int, warmup_steps: int, drop_steps: list[int], factor: float) -> float:
    """LR multiplier: linear warmup from 0, then ×``factor`` at each of ``drop_steps`` (W-MSE's
    official ``MultiStepLR`` schedule, htdt/self-supervised train.py)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return factor ** sum(step >= drop for drop in drop_steps)


StepFunction = Callable[[int], float]


class HyperparameterScheduler:
    """Sets every parameter group's scheduled hyperparameters for the step about to be taken:
    ``functions[i][key](step)`` into ``param_groups[i][key]``, at construction (step 0) and
    after each ``step()``. Its state is the step count; the functions are rebuilt from the
    settings, so a resumed run continues exactly."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, functions: list[dict[str, StepFunction]]
    ) -> None:
        if len(functions) != len(optimizer.param_groups):
            raise ValueError("one dictionary of schedules per parameter group")
        self.optimizer = optimizer
        self.functions = functions
        self.steps = 0
        self._apply()

    def _apply(self) -> None:
        for group, functions in zip(self.optimizer.param_groups, self.functions, strict=True):
            for key, function in functions.items():
                group[key] = function(self.steps)

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self._apply()


def _scaled(multiplier: StepFunction, base: float) -> StepFunction:
    return lambda step: base * multiplier(step)


def _cosine_to(end: float, start: float, total_steps: int) -> StepFunction:
    return lambda step: cosine(step, total_steps, start, end)


def build_hyperparameter_scheduler(
    optimizer: torch.optim.Optimizer,
    settings: OptimizerSettings,
    steps_per_epoch: int,
    epochs: int,
) -> HyperparameterScheduler:
    """The lr of every group but those marked ``fixed_lr`` on warm-up then cosine (to
    ``settings.lr_end``) or step decay; each of ``settings.schedules`` on its groups."""
    total = steps_per_epoch * epochs
    warmup = round(settings.warmup_epochs * steps_per_epoch)
    if settings.lr_schedule == "step":
        drops = [(epochs - e) * steps_per_epoch for e in settings.lr_drop_epochs]

        def multiplier(step: int) -> float:
            return warmup_step_decay(step, warmup, drops, settings.lr_drop_factor)
    else:
        end_factor = settings.lr_end / settings.lr

        def multiplier(step: int) -> float:
            return warmup_cosine(step, total, warmup, end_factor)

    functions: list[dict[str, StepFunction]] = []
    for group in optimizer.param_groups:
        scheduled = {} if group.get("fixed_lr") else {"lr": _scaled(multiplier, group["lr"])}
        for schedule in settings.schedules:
            if group["name"] in schedule.groups:
                start = group[schedule.hyperparameter]
                scheduled[schedule.hyperparameter] = _cosine_to(schedule.end, start, total)
        functions.append(scheduled)
    return HyperparameterScheduler(optimizer, functions)
