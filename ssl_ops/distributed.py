"""Cross-worker collectives: the gather with gradients every batch-spanning objective uses.

With no process group (or a group of one) every function here is the identity, so
the objectives in this package are plain math in a single process.

Gradient convention: rank r's backward computes the gradient of the SUM over ranks of the
ranks' losses with respect to rank r's tensors. DDP then averages the parameter gradients, so a
loss that every rank evaluates identically on the gathered global batch (VICReg, Barlow Twins,
NT-Xent, …) gets exactly the single-process full-batch gradient, and so does a per-sample mean
that each rank evaluates on its own samples (BYOL, SimSiam, PIRL's NCE).

No function here synchronises the host with the device: none reads a tensor's value on the
host, so a CUDA step is not stalled by a collective (issue 12, defect 7).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .checks import UnequalBatchesError, strict

ProcessGroup = dist.ProcessGroup | None


def world_size(group: ProcessGroup = None) -> int:
    """Number of processes in ``group`` (default group), 1 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def rank(group: ProcessGroup = None) -> int:
    """Rank of this process in ``group`` (default group), 0 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group)
    return 0


def _all_gather(x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((world_size(group) * x.shape[0], *x.shape[1:]))
    dist.all_gather_single(out, x, group=group)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward hands each rank the sum over ranks of its slice's gradient
    (one reduce-scatter).

    Every rank evaluates the same loss on the gathered batch, so the gradient that reaches
    rank r's slice is the sum of the W identical copies; DDP's average then turns it back into
    exactly the single-process full-batch gradient (VICReg's ``FullGatherLayer``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return _all_gather(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        mine = grad.new_empty((grad.shape[0] // world_size(ctx.group), *grad.shape[1:]))
        dist.reduce_scatter_single(mine, grad, group=ctx.group)
        return mine, None


def _check_equal_batch_sizes(x: torch.Tensor, group: ProcessGroup) -> None:
    if not strict():
        return
    local = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    counts = _all_gather(local, group).tolist()
    if len(set(counts)) != 1:
        raise UnequalBatchesError(
            f"gather_with_grad needs the same local batch size on every rank, got {counts} "
            "(drop or pad the last batch so that every rank yields equal batches)"
        )


def gather_with_grad(x: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients for the local slice.

    One all_gather, no host sync. Every rank must pass the same shape; inside
    ``checks.strict_checks()`` a mismatch raises ``UnequalBatchesError`` (a ``ValueError``) on
    every rank.
    """
    if world_size(group) == 1:
        return x
    _check_equal_batch_sizes(x, group)
    return _GatherWithGrad.apply(x, group)


@torch.no_grad()
def gather(x: torch.Tensor, group: ProcessGroup = None) -> torch.Tensor:
    """``gather_with_grad`` without the gradient: for indices and embeddings of state updates."""
    if world_size(group) == 1:
        return x
    _check_equal_batch_sizes(x, group)
    return _all_gather(x, group)


def broadcast_from_rank0(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's copy of ``x`` on every rank (random permutations and negatives must agree).

    Not differentiable: meant for indices drawn from a random generator.
    """
    if world_size() == 1:
        return x
    x = x.contiguous()
    dist.broadcast(x, src=0)
    return x


def shared_randperm(
    n: int, *, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A permutation of range(n), identical on every rank."""
    gen_device = generator.device if generator is not None else "cpu"
    drawn = torch.randperm(n, generator=generator, device=gen_device)
    return broadcast_from_rank0(drawn.to(device))
