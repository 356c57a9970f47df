"""GlobalBatchNorm's function in one process: the BN math against torch's own BatchNorm, float64
gradcheck, and bf16 + channels_last accuracy against a float64 reference. The 2-process gloo
equivalence is in tests/test_ssl_ops_distributed.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslpipe.ssl_ops.sync_batchnorm import (
    GlobalBatchNorm,
    convert_to_global_batchnorm,
    global_batch_norm,
)

DT = torch.float64


def _inputs(dtype: torch.dtype = DT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # channel means from -30 to 30 against stds of 0.5 to 2: Σx² - n·mean² would cancel
    mean = torch.linspace(-30, 30, 6, dtype=DT).view(1, 6, 1, 1)
    std = torch.linspace(0.5, 2, 6, dtype=DT).view(1, 6, 1, 1)
    x = torch.randn(8, 6, 5, 5, generator=g, dtype=DT) * std + mean
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    return x, torch.randn(6, generator=g, dtype=DT), torch.randn(6, generator=g, dtype=DT)


def _forward_backward(fn, x, weight, bias) -> list[torch.Tensor]:
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = fn(x, weight, bias)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=DT)
    (y.to(DT) * upstream).sum().backward()
    return [y, x.grad, weight.grad, bias.grad]


def _native(x, weight, bias):
    return F.batch_norm(x, None, None, weight, bias, True, 0.1, 1e-5)


def test_matches_batchnorm_in_float64_and_gradcheck() -> None:
    x, weight, bias = _inputs()
    got = _forward_backward(lambda *a: global_batch_norm(*a)[0], x, weight, bias)
    for ours, native in zip(got, _forward_backward(_native, x, weight, bias), strict=True):
        torch.testing.assert_close(ours, native, rtol=1e-10, atol=1e-10)
    _, mean, unbiased = global_batch_norm(x, weight, bias)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(unbiased, x.var((0, 2, 3)), rtol=1e-12, atol=1e-12)
    small = x[:3, :2, :2, :2].clone().requires_grad_()
    affine = (weight[:2].clone().requires_grad_(), bias[:2].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: global_batch_norm(*a)[0], (small, *affine))
    assert torch.autograd.gradcheck(lambda t: global_batch_norm(t, None, None)[0], (small,))


def test_bf16_channels_last_is_as_accurate_as_native_batchnorm_under_autocast() -> None:
    x, weight, bias = _inputs(torch.bfloat16)
    reference = _forward_backward(_native, x.to(DT), weight, bias)
    affine = weight.float(), bias.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _forward_backward(lambda *a: global_batch_norm(*a)[0], x, *affine)
        native = _forward_backward(_native, x, *affine)
    assert ours[0].dtype == ours[1].dtype == torch.bfloat16  # output and dx as the input
    assert ours[0].is_contiguous(memory_format=torch.channels_last)

    def error(got: torch.Tensor, ref: torch.Tensor) -> float:
        return float((got.detach().to(DT) - ref.detach()).norm() / ref.detach().norm())

    for name, mine, theirs, ref in zip(
        ["y", "dx", "dw", "db"], ours, native, reference, strict=True
    ):
        assert error(mine, ref) <= 1.05 * error(theirs, ref) + 1e-4, name
        assert error(mine, ref) < 3e-3, name  # bf16 keeps 8 significant bits
    _, _, unbiased = global_batch_norm(x, *affine)
    assert unbiased.dtype == torch.float32
    torch.testing.assert_close(unbiased.to(DT), x.to(DT).var((0, 2, 3)), rtol=1e-3, atol=0)


def test_input_gradient_only() -> None:
    x, _, _ = _inputs(torch.float32)
    x.requires_grad_()
    y, _, _ = global_batch_norm(x, None, None)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    expected = torch.autograd.grad(_native(x, None, None).square().sum(), x)[0]
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 2, 2)])
def test_other_ranks_of_input(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=DT)
    torch.testing.assert_close(global_batch_norm(x, None, None)[0], _native(x, None, None))


def test_conversion_keeps_frozen_layers_frozen_and_the_mode() -> None:
    """An EMA teacher's batch norm (DINO's head with ``use_bn_in_head``, BYOL's target) has no
    gradients: converted with ``requires_grad`` on, DDP waited for them and the second step
    failed ("parameters that were not used in producing loss")."""
    student = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    teacher.requires_grad_(False)
    teacher[1].running_mean.fill_(3.0)
    student[1].eval()
    method = convert_to_global_batchnorm(torch.nn.ModuleDict({"s": student, "t": teacher}))
    assert all(isinstance(method[k][1], GlobalBatchNorm) for k in "st")
    assert [p.requires_grad for p in method["t"].parameters()] == [False] * 4
    assert [p.requires_grad for p in method["s"].parameters()] == [True] * 4
    assert not method["s"][1].training and method["t"][1].training
    assert method["t"][1].running_mean.tolist() == [3.0] * 4
