"""LARS against a hand computation; parameter groups; the warmup + cosine schedule; the
per-group hyperparameter scheduler."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslpipe.ssl_ops.catalog import HyperSchedule, OptimizerSettings
from sslpipe.ssl_ops.optim import (
    LARS,
    build_hyperparameter_scheduler,
    build_optimizer,
    build_settings_optimizer,
    warmup_cosine,
)


def test_lars_step_matches_the_formula_and_skips_biases() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer.weight.grad, layer.bias.grad = torch.randn(3, 4), torch.randn(3)
    optimizer = build_optimizer("lars", layer, lr=0.5, weight_decay=0.1, bias_lr=0.05)
    optimizer.step()
    update = layer.weight.grad + 0.1 * w0
    trust = 0.001 * w0.norm() / update.norm()
    torch.testing.assert_close(layer.weight.detach(), w0 - 0.5 * trust * update)
    # biases: no weight decay, no trust ratio, their own lr
    torch.testing.assert_close(layer.bias.detach(), b0 - 0.05 * layer.bias.grad)


def test_lars_momentum_accumulates() -> None:
    p = nn.Parameter(torch.ones(1))  # ndim 1: plain momentum SGD inside LARS
    optimizer = build_optimizer("lars", nn.ParameterList([p]), lr=1.0, weight_decay=0.0)
    for _ in range(2):
        p.grad = torch.ones(1)
        optimizer.step()
    assert math.isclose(p.item(), 1 - 1 - 1.9, rel_tol=1e-6)


@torch.no_grad()
def _reference_lars_step(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The per-parameter loop LARS had before its foreach rewrite (official VICReg/Barlow)."""
    for group in optimizer.param_groups:
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
            buffer = state.setdefault(p, torch.zeros_like(p))
            buffer.mul_(group["momentum"]).add_(update)
            p.add_(buffer, alpha=-group["lr"])


def test_foreach_lars_equals_the_per_parameter_loop() -> None:
    torch.manual_seed(0)

    def model() -> nn.Module:
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3), nn.Linear(3, 2))
        with torch.no_grad():
            net[2].weight.zero_()  # zero-norm weight: trust ratio 1
        return net.double()

    fast, slow = model(), model()
    optimizers = [build_optimizer("lars", m, lr=0.3, weight_decay=0.01, bias_lr=0.05)
                  for m in (fast, slow)]  # fmt: skip
    reference_state: dict = {}
    for step in range(4):
        grads = [torch.randn_like(p) for p in fast.parameters()]
        for net in (fast, slow):
            for p, g in zip(net.parameters(), grads, strict=True):
                p.grad = g.clone()
            net[3].bias.grad = None  # skipped, no state
            if step == 1:
                net[3].weight.grad.zero_()  # zero gradient on a decayed weight
        optimizers[0].step()
        _reference_lars_step(optimizers[1], reference_state)
        for p, q in zip(fast.parameters(), slow.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-15)
    assert fast[3].bias.grad is None and "momentum_buffer" not in optimizers[0].state[fast[3].bias]
    assert isinstance(optimizers[0], LARS)


def test_warmup_then_cosine() -> None:
    assert warmup_cosine(0, 100, 10) == 0.1
    assert warmup_cosine(9, 100, 10) == 1.0
    assert math.isclose(warmup_cosine(55, 100, 10), 0.001 + 0.999 * 0.5)
    assert math.isclose(warmup_cosine(100, 100, 10), 0.001)


def _settings(**fields) -> OptimizerSettings:
    defaults = {
        "name": "adamw",
        "lr": 1e-3,
        "bias_lr": None,
        "weight_decay": 0.04,
        "decay_bias_and_norm": False,
        "betas": (0.9, 0.95),
        "lr_schedule": "cosine",
        "warmup_epochs": 2,
        "lr_end": 1e-6,
        "lr_drop_epochs": (),
        "lr_drop_factor": 1.0,
        "schedules": (HyperSchedule("weight_decay", 0.4, ("weights",)),),
    }
    return OptimizerSettings(**{**defaults, **fields})


def test_scheduler_sets_each_groups_hyperparameters_and_resumes_exactly() -> None:
    """DINO's recipe: lr warm-up then cosine to an absolute min lr, weight decay on a cosine
    from 0.04 to 0.4 on the weights only (utils.cosine_scheduler); AdamW's betas as given."""
    settings, steps_per_epoch, epochs = _settings(), 5, 10
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    optimizer = build_settings_optimizer(settings, model)
    scheduler = build_hyperparameter_scheduler(optimizer, settings, steps_per_epoch, epochs)
    weights, norms = optimizer.param_groups
    assert (weights["name"], norms["name"]) == ("weights", "biases_and_norms")
    assert weights["betas"] == (0.9, 0.95)
    seen = []
    for _ in range(50):
        seen.append((weights["lr"], weights["weight_decay"], norms["lr"], norms["weight_decay"]))
        optimizer.step()
        scheduler.step()
    assert seen[0][0] == pytest.approx(1e-3 / 10) and seen[9][0] == pytest.approx(1e-3)
    assert seen[0][1] == pytest.approx(0.04) and seen[-1][1] == pytest.approx(0.4, abs=1e-3)
    assert weights["lr"] == pytest.approx(1e-6) and weights["weight_decay"] == pytest.approx(0.4)
    middle = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 25 / 50))
    assert seen[25][1] == pytest.approx(middle)
    assert all(row[3] == 0.0 for row in seen)  # norms never decay
    assert all(row[0] == row[2] for row in seen)  # one lr schedule for both groups

    resumed = build_settings_optimizer(settings, model)
    restored = build_hyperparameter_scheduler(resumed, settings, steps_per_epoch, epochs)
    scheduler_state = {"steps": 25}
    restored.load_state_dict(scheduler_state)
    assert restored.state_dict() == scheduler_state
    assert resumed.param_groups[0]["lr"] == seen[25][0]
    assert resumed.param_groups[0]["weight_decay"] == seen[25][1]


def test_fixed_lr_groups_keep_their_lr_and_other_hyperparameters_follow_their_schedule() -> None:
    settings = _settings(
        name="sgd", schedules=(HyperSchedule("momentum", 0.99, ("biases_and_norms",)),)
    )
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    optimizer = build_settings_optimizer(settings, model, fixed_lr=model[1].parameters())
    scheduler = build_hyperparameter_scheduler(optimizer, settings, 1, 4)
    for _ in range(4):
        scheduler.step()
    lrs = {(g["name"], g["fixed_lr"]): g["lr"] for g in optimizer.param_groups}
    assert lrs[("weights", True)] == lrs[("biases_and_norms", True)] == 1e-3
    assert lrs[("weights", False)] == pytest.approx(1e-6)
    momenta = {(g["name"], g["fixed_lr"]): g["momentum"] for g in optimizer.param_groups}
    assert momenta[("weights", False)] == 0.9 and momenta[("biases_and_norms", False)] == 0.99
