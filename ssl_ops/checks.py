"""Input checks shared by the objectives."""

from __future__ import annotations

import torch


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Raise a clear error instead of letting a NaN/Inf embedding produce a NaN loss."""
    for index, tensor in enumerate(tensors):
        if not torch.isfinite(tensor).all():
            raise FloatingPointError(
                f"{name}: input {index} contains NaN or Inf values "
                "(the backbone or projector diverged before the loss)"
            )


def check_batch(name: str, size: int, minimum: int = 2) -> None:
    """Batch statistics (unbiased variance, negatives) need at least ``minimum`` samples."""
    if size < minimum:
        raise ValueError(f"{name}: needs a (global) batch of at least {minimum}, got {size}")
