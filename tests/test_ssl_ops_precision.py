"""``loss_precision`` of the objectives built on DxD (NxN) statistics GEMMs.

"fp32" is the float64-checked reference (tests/test_ssl_ops_reference.py). Stated tolerance of
"tf32" and "bf16" against "fp32", N = 256, D = 64 correlated embeddings, the GEMM-built terms
alone: loss within 1e-3 relative, gradient within 2e-2 relative (L2 norm; measured: bf16 up to
2.5e-4 and 9.9e-3, Barlow Twins the largest). This CPU has no TF32, so "tf32" equals "fp32" here;
on a GPU the same bounds apply (TF32 keeps 10 mantissa bits, bf16 7).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sslpipe import ssl_ops
from sslpipe.ssl_ops._common import _matmul_flags

GemmLoss = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]

# The terms each objective computes with its statistics GEMMs (the others do not change).
GEMM_TERMS: dict[str, GemmLoss] = {
    "vicreg": lambda a, b, p: ssl_ops.vicreg_loss(a, b, sim_coeff=0, std_coeff=0, loss_precision=p),
    "barlow_twins": lambda a, b, p: ssl_ops.barlow_twins_loss(a, b, loss_precision=p),
    "vicreg_exp": lambda a, b, p: ssl_ops.vicreg_exp_loss(
        a, b, sim_coeff=0, std_coeff=0, loss_precision=p
    ),
    "vicreg_ctr": lambda a, b, p: ssl_ops.vicreg_ctr_loss(
        a, b, sim_coeff=0, std_coeff=0, loss_precision=p
    ),
}


def _embeddings() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=g) / 8 + torch.eye(64)
    z1 = torch.randn(256, 64, generator=g) @ mix
    return z1, z1 + 0.3 * torch.randn(256, 64, generator=g)


def _loss_and_grad(fn: GemmLoss, precision: str) -> tuple[float, torch.Tensor]:
    a, b = (z.clone().requires_grad_() for z in _embeddings())
    loss = fn(a, b, precision)
    loss.backward()
    return float(loss.detach()), torch.cat([a.grad.flatten(), b.grad.flatten()])


@pytest.mark.parametrize("name", list(GEMM_TERMS))
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_stays_within_the_stated_tolerance(name: str, precision: str) -> None:
    loss, grad = _loss_and_grad(GEMM_TERMS[name], precision)
    ref_loss, ref_grad = _loss_and_grad(GEMM_TERMS[name], "fp32")
    assert loss == pytest.approx(ref_loss, rel=1e-3)
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < 2e-2
    if precision == "bf16":  # the bf16 path really rounds (it is not fp32 in disguise)
        assert loss != ref_loss


class _RecordFlags(TorchDispatchMode):
    """Records the CPU matmul precision flag at every GEMM, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.flags: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default):
            self.flags.append(torch.backends.mkldnn.matmul.fp32_precision)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("precision", "flag"), [("fp32", "ieee"), ("tf32", "tf32")])
def test_forward_and_backward_gemms_run_under_the_scoped_flag(precision: str, flag: str) -> None:
    settings = torch.backends.mkldnn.matmul
    saved = settings.fp32_precision
    settings.fp32_precision = "bf16"  # a caller's global choice, opposite of both
    try:
        a, b = (z[:16, :8].clone().requires_grad_() for z in _embeddings())
        with _RecordFlags() as record:
            ssl_ops.barlow_twins_loss(a, b, loss_precision=precision).backward()
        assert record.flags == [flag] * 3  # C forward, dC/da and dC/db backward
        assert settings.fp32_precision == "bf16"  # restored
    finally:
        settings.fp32_precision = saved


def test_cuda_flags_are_scoped_and_restored_on_error() -> None:
    settings = torch.backends.cuda.matmul
    saved = settings.fp32_precision, settings.allow_bf16_reduced_precision_reduction
    settings.fp32_precision = "tf32"
    try:
        with _matmul_flags("cuda", "fp32"):
            assert settings.fp32_precision == "ieee"
        with pytest.raises(RuntimeError), _matmul_flags("cuda", "bf16"):
            assert not settings.allow_bf16_reduced_precision_reduction  # fp32 accumulation
            raise RuntimeError
        assert settings.fp32_precision == "tf32"
        assert settings.allow_bf16_reduced_precision_reduction == saved[1]
    finally:
        settings.fp32_precision, settings.allow_bf16_reduced_precision_reduction = saved


def test_unknown_precision_is_refused() -> None:
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="loss_precision must be one of"):
        ssl_ops.vicreg_loss(z, z, loss_precision="fp16")
