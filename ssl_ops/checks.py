"""Input checks shared by the objectives.

Shape checks cost nothing and always run. Checks that read tensor values or other ranks'
sizes need the host to wait for the device (and, for sizes, for the other ranks), so they run
only inside ``strict_checks()``: a trainer wraps its first step in it and then relies on its
own device-side guard. Outside the block a NaN input gives a NaN loss, as in plain torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_strict = {"depth": 0}


@contextlib.contextmanager
def strict_checks() -> Iterator[None]:
    """Within this block objectives refuse NaN/Inf inputs and ``gather_with_grad`` checks that
    every rank holds a batch of the same size (both raise instead of computing garbage or
    hanging). Each check is a host synchronisation, so a trainer uses the block for its first
    step only; every rank must enter it at the same step.

    Checking only "new" local shapes would not be safe: the ranks would disagree on whether to
    run the size check exactly when their sizes differ, and the mismatched collectives would
    hang. The loader makes local batch sizes equal by contract; the first step proves it.
    """
    _strict["depth"] += 1
    try:
        yield
    finally:
        _strict["depth"] -= 1


def strict() -> bool:
    """Whether the value checks run (inside ``strict_checks()``)."""
    return _strict["depth"] > 0


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Inside ``strict_checks()``: a clear error instead of a NaN loss from NaN/Inf inputs."""
    if not strict():
        return
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
