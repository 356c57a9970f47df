"""Cross-worker gather with gradients, the one collective every objective uses.

With no process group (or a group of one) every function here is the identity, so
the objectives in this package are plain math in a single process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes in the default group, 1 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """Rank of this process in the default group, 0 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward hands each rank the sum over ranks of its slice's gradient.

    Every rank evaluates the same loss on the gathered batch, so the gradient that reaches
    rank r's slice is the sum of the W identical copies; DDP's average then turns it back into
    exactly the single-process full-batch gradient (VICReg's ``FullGatherLayer``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def _check_equal_batch_sizes(x: torch.Tensor) -> None:
    local = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    counts = [int(s.item()) for s in sizes]
    if len(set(counts)) != 1:
        raise ValueError(
            f"gather_with_grad needs the same local batch size on every rank, got {counts} "
            "(drop or pad the last batch so that every rank yields equal batches)"
        )


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients for the local slice.

    Raises ``ValueError`` on every rank (instead of hanging) when the local batch sizes differ.
    """
    if world_size() == 1:
        return x
    _check_equal_batch_sizes(x)
    return _GatherWithGrad.apply(x)


class _AllReduceSumWithGrad(torch.autograd.Function):
    """Sum over ranks; backward sums the ranks' gradients, as for ``_GatherWithGrad``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = x.detach().clone().contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks, differentiable (each rank gets the summed upstream gradient)."""
    if world_size() == 1:
        return x
    return _AllReduceSumWithGrad.apply(x)


def broadcast_from_rank0(x: torch.Tensor) -> torch.Tensor:
    """Rank 0's copy of ``x`` on every rank (random permutations and negatives must agree).

    Not differentiable: meant for indices drawn from a random generator.
    """
    if world_size() == 1:
        return x
    x = x.contiguous()
    dist.broadcast(x, src=0)
    return x


def shared_randint(
    high: int, size: int, *, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``size`` indices uniform in [0, high), identical on every rank."""
    gen_device = generator.device if generator is not None else "cpu"
    drawn = torch.randint(high, (size,), generator=generator, device=gen_device)
    return broadcast_from_rank0(drawn.to(device))


def shared_randperm(
    n: int, *, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A permutation of range(n), identical on every rank."""
    gen_device = generator.device if generator is not None else "cpu"
    drawn = torch.randperm(n, generator=generator, device=gen_device)
    return broadcast_from_rank0(drawn.to(device))
