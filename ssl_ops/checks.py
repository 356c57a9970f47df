"""Input checks shared by the objectives.

Shape checks cost nothing and always run. Checks that read tensor values or other ranks'
sizes need the host to wait for the device (and, for sizes, for the other ranks), so they run
only inside ``strict_checks()``: a trainer wraps its first step in it and then relies on its
own device-side guard. Outside the block a NaN input gives a NaN loss, as in plain torch.

Under torch.distributed a strict check decides for every rank at once: the ranks' verdicts
meet in one all-reduce and every rank raises the same ``StrictCheckError`` (naming the ranks
at fault), so no rank raises alone while the others wait in the next collective.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

_strict = {"depth": 0}


class StrictCheckError(Exception):
    """A strict check that failed on some rank, raised on every rank at the same point."""


class NonFiniteInputError(StrictCheckError, FloatingPointError):
    """NaN/Inf values in an objective's inputs (on some rank)."""


class UnequalBatchesError(StrictCheckError, ValueError):
    """Ranks that hold batches of different sizes where a gather needs equal ones."""


class NotPositiveDefiniteError(StrictCheckError, FloatingPointError):
    """A covariance that a whitening step cannot factorise (collapsed embeddings)."""


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


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def ranks_at_fault(failed: torch.Tensor) -> list[list[int]]:
    """For a vector of this rank's failed checks (bool), the ranks where each check failed,
    the same lists on every rank: one all-reduce (none without a process group)."""
    if _world_size() == 1:
        return [[0] if bad else [] for bad in failed.tolist()]
    votes = failed.new_zeros((dist.get_world_size(), failed.numel()), dtype=torch.int32)
    votes[dist.get_rank()] = failed.to(torch.int32)
    dist.all_reduce(votes)
    rows = votes.T.tolist()  # the host synchronisation
    return [[rank for rank, vote in enumerate(row) if vote] for row in rows]


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Inside ``strict_checks()``: a clear error instead of a NaN loss from NaN/Inf inputs, on
    every rank when any rank's inputs are bad (module docstring)."""
    if not strict():
        return
    failed = torch.stack([~torch.isfinite(tensor).all() for tensor in tensors])
    for index, ranks in enumerate(ranks_at_fault(failed)):
        if ranks:
            where = f" on rank(s) {ranks}" if _world_size() > 1 else ""
            raise NonFiniteInputError(
                f"{name}: input {index} contains NaN or Inf values{where} "
                "(the backbone or projector diverged before the loss)"
            )


def check_batch(name: str, size: int, minimum: int = 2) -> None:
    """Batch statistics (unbiased variance, negatives) need at least ``minimum`` samples."""
    if size < minimum:
        raise ValueError(f"{name}: needs a (global) batch of at least {minimum}, got {size}")
