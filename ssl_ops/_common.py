"""Helpers shared by the objectives: precision guard, masked log-sum-exp, off-diagonals, Grams,
and the matmul precision (``loss_precision``) of the DxD statistics."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from .checks import check_batch, check_finite
from .distributed import gather_with_grad

T = TypeVar("T")

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
        return value.float()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return type(value)(_upcast(v) for v in value)
    return value


def _first_tensor(args: Sequence[Any]) -> torch.Tensor | None:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            return value[0]
    return None


def full_precision(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with autocast off and half/bfloat16 positional inputs cast to float32.

    Exponentials, Cholesky factors and DxD covariance sums overflow or lose all precision in
    16-bit floats, so every objective computes in float32 (float64 stays float64).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        first = _first_tensor(args)
        device_type = first.device.type if first is not None else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*(_upcast(a) for a in args), **kwargs)

    return wrapper


def check_embeddings(name: str, *tensors: torch.Tensor) -> None:
    """NxD embeddings of one shape with finite values, else a clear error."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"{name}: expected NxD tensors of one shape, got {sorted(shapes)}")
    check_finite(name, *tensors)


def prepare(name: str, *tensors: torch.Tensor, min_batch: int = 2) -> list[torch.Tensor]:
    """Validate NxD embeddings of equal shape, then gather them over the global batch."""
    check_embeddings(name, *tensors)
    gathered = [gather_with_grad(t) for t in tensors]
    check_batch(name, gathered[0].shape[0], min_batch)
    return gathered


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The n(n-1) off-diagonal entries of a square matrix, as a view (no mask, no copy)."""
    n, n2 = m.shape
    if n != n2:
        raise ValueError(f"off_diagonal needs a square matrix, got {tuple(m.shape)}")
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def masked_logsumexp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise log Σ_{j: mask_ij} exp(logits_ij), the stable form of every contrastive term."""
    return logits.masked_fill(~mask, float("-inf")).logsumexp(dim=-1)


def offdiag_logsumexp(m: torch.Tensor) -> torch.Tensor:
    """Row-wise log Σ_{j≠i} exp(m_ij)."""
    eye = torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    return masked_logsumexp(m, ~eye)


def cross_gram_sq_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_ij (a_i·b_j)² for NxD a, b, via the cheaper of ‖abᵀ‖²_F and ⟨aᵀa, bᵀb⟩_F."""
    n, d = a.shape
    if d < n:
        return ((a.T @ a) * (b.T @ b)).sum()
    return (a @ b.T).pow(2).sum()


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


# ``loss_precision`` of the objectives whose cost is a DxD (or NxN) statistics matmul.
LOSS_PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(name: str, precision: str) -> None:
    if precision not in LOSS_PRECISIONS:
        raise ValueError(
            f"{name}: loss_precision must be one of {list(LOSS_PRECISIONS)}, got {precision!r}"
        )


@contextlib.contextmanager
def _matmul_flags(device_type: str, precision: str) -> Iterator[None]:
    """fp32 matmuls in IEEE fp32 ("fp32") or TF32 ("tf32") inside the block only; bf16 GEMMs
    accumulate in fp32. The caller's global settings are restored on exit (also on error)."""
    if device_type == "cuda":
        flags = torch.backends.cuda.matmul
        saved = flags.fp32_precision, flags.allow_bf16_reduced_precision_reduction
        flags.fp32_precision = "tf32" if precision == "tf32" else "ieee"
        flags.allow_bf16_reduced_precision_reduction = False
        try:
            yield
        finally:
            flags.fp32_precision, flags.allow_bf16_reduced_precision_reduction = saved
    else:  # oneDNN uses TF32 only where the CPU has it; "fp32" forbids any reduced format
        flags = torch.backends.mkldnn.matmul
        saved_cpu = flags.fp32_precision
        flags.fp32_precision = "tf32" if precision == "tf32" else "ieee"
        try:
            yield
        finally:
            flags.fp32_precision = saved_cpu


def _mm(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    """a @ b at ``precision``; "bf16" expects bf16 inputs and returns float32."""
    with _matmul_flags(a.device.type, precision):
        if precision != "bf16":
            return a @ b
        if a.device.type == "cuda":
            return torch.mm(a, b, out_dtype=torch.float32)
        # No bf16 GEMM with a float32 output off CUDA: the products of two bf16 numbers are
        # exact in float32, so this float32 GEMM gives the same numbers (up to summation order).
        return a.float() @ b.float()


def _low(x: torch.Tensor, precision: str) -> torch.Tensor:
    return x.bfloat16() if precision == "bf16" else x


class _CrossMatmul(torch.autograd.Function):
    """aᵀb whose forward AND backward GEMMs run at ``precision`` (autograd's own backward would
    run outside any scope the caller sets). "bf16" keeps the bf16 copies for backward."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:  # type: ignore[override]
        dtype = a.dtype
        a, b = _low(a, precision), _low(b, precision)
        ctx.save_for_backward(a, b)
        ctx.precision, ctx.dtype = precision, dtype
        return _mm(a.T, b, precision).to(dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        a, b = ctx.saved_tensors
        grad = _low(grad, ctx.precision)
        grad_a = _mm(b, grad.T, ctx.precision).to(ctx.dtype) if ctx.needs_input_grad[0] else None
        grad_b = _mm(a, grad, ctx.precision).to(ctx.dtype) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None


class _Gram(torch.autograd.Function):
    """xᵀx at ``precision``; backward is the one GEMM x(G + Gᵀ) instead of autograd's two."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, precision: str) -> torch.Tensor:  # type: ignore[override]
        dtype = x.dtype
        x = _low(x, precision)
        ctx.save_for_backward(x)
        ctx.precision, ctx.dtype = precision, dtype
        return _mm(x.T, x, precision).to(dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        symmetric = _low(grad + grad.T, ctx.precision)
        return _mm(x, symmetric, ctx.precision).to(ctx.dtype), None


def cross_matmul(a: torch.Tensor, b: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """aᵀb (DxD for NxD a, b) at ``precision``: "fp32" (IEEE, TF32 off), "tf32" (TF32 GEMM on
    GPUs that have it) or "bf16" (bf16 inputs, float32 accumulation and output)."""
    return _CrossMatmul.apply(a, b, precision)


def gram(x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """xᵀx at ``precision`` (``cross_matmul(x, x)`` with a single-GEMM backward)."""
    return _Gram.apply(x, precision)
