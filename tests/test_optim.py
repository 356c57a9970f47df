"""LARS against a hand computation; parameter groups; the warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from sslpipe.ssl_ops.optim import build_optimizer, warmup_cosine


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


def test_warmup_then_cosine() -> None:
    assert warmup_cosine(0, 100, 10) == 0.1
    assert warmup_cosine(9, 100, 10) == 1.0
    assert math.isclose(warmup_cosine(55, 100, 10), 0.001 + 0.999 * 0.5)
    assert math.isclose(warmup_cosine(100, 100, 10), 0.001)
