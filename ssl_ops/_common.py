"""Helpers shared by the objectives: precision guard, masked log-sum-exp, off-diagonals, Grams."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
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


def prepare(name: str, *tensors: torch.Tensor, min_batch: int = 2) -> list[torch.Tensor]:
    """Validate NxD embeddings of equal shape, then gather them over the global batch."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"{name}: expected NxD tensors of one shape, got {sorted(shapes)}")
    check_finite(name, *tensors)
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
