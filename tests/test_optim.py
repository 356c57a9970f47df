"""LARS against a hand computation; parameter groups; the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from sslpipe.ssl_ops.optim import LARS, build_optimizer, warmup_cosine


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
