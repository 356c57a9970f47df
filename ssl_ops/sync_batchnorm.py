"""Batch normalization over the global batch, on any device and backend (NCCL and gloo).

``torch.nn.SyncBatchNorm`` runs only on CUDA tensors, and every forward of every layer makes the
host wait for the device: it drops the statistics of ranks with an empty batch with a boolean
mask, whose result size the host must read (110 syncs per ResNet-50 step with two views).
``GlobalBatchNorm`` relies on what the loaders guarantee (every rank has a non-empty batch;
equal sizes are not even needed) and never reads a device value on the host:

- forward: each rank computes its local mean and M2 = Σ(x - mean)² per channel, accumulated in
  float32 whatever the input dtype (bf16 under autocast; float64 stays float64), M2 from x minus
  the mean rounded to x's dtype, so a channel whose mean is large against its std does not lose
  its variance to the cancellation of Σx² - n·mean². ONE collective per layer, an all-gather of
  the (mean, M2, count) of every rank of ``process_group`` (2C+1 values per rank; default group:
  all ranks, or e.g. a node-local group to keep it on NVLink), combined with Chan et al.'s
  pairwise formula: mean = Σ n_r·mean_r / n, var = (Σ M2_r + Σ n_r·(mean_r - mean)²) / n
  (biased, as BN normalises). The input is then normalised by the fused ``batch_norm`` kernel in
  inference form with those statistics, so the output has the input's dtype and memory format
  (``channels_last`` stays channels_last);
- backward: the local Σdy and Σdy·(x - mean) (float32) go through one all-reduce, and
  dx = w·invstd·(dy - Σdy/n - (x - mean)·invstd²·Σdy(x - mean)/n) with the global sums (the
  BN gradient over the global batch, as ``SyncBatchNorm``'s backward), formed in float32
  (products included) and rounded once to the input dtype. The weight and bias gradients are
  the local sums; DDP's averaging does the rest. In bf16 the result is as close to a float64
  reference as the native ``BatchNorm`` under autocast (tests/test_ssl_ops_batchnorm.py).

The price of staying in plain torch ops (no CUDA-only fused kernels, so the CPU tests run the
GPU code): a few more passes over the activation than the fused SyncBatchNorm kernels, and in
backward a transient float32 tensor of the layer's size.

With one process (or a group of one) the layer is the native ``BatchNorm``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .distributed import ProcessGroup, gather, world_size


def _accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for float32 and 16-bit inputs, float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def _centred(x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x - meañ in x's dtype, with meañ the mean rounded to that dtype, and δ = meañ - mean.

    x - meañ is exact when x and meañ are within a factor 2 (Sterbenz) and small otherwise, so
    sums over it do not cancel the way Σx² - n·mean² does when |mean| ≫ std."""
    rounded = mean.to(x.dtype)
    return x - _per_channel(rounded, x), rounded.to(mean.dtype) - mean


class _GlobalBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        group: ProcessGroup,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.dim())]
        acc = _accumulation_dtype(x)
        channels, n = x.shape[1], x.numel() // x.shape[1]
        local_mean = x.sum(dims, dtype=acc) / n
        centred, shift = _centred(x, local_mean)
        local_m2 = torch.linalg.vector_norm(centred, 2, dims, dtype=acc).square() - n * shift**2
        stats = torch.cat([local_mean, local_m2, local_mean.new_full((1,), n)])[None]
        if world_size(group) > 1:  # ONE collective: every rank's (mean, M2, count)
            stats = gather(stats, group)
        means, m2s, counts = stats[:, :channels], stats[:, channels:-1], stats[:, -1:]
        count = counts.sum()
        mean = (counts * means).sum(dim=0) / count
        # Chan et al.'s pairwise combination: no cancellation across ranks either.
        var = (m2s.sum(dim=0) + (counts * (means - mean).square()).sum(dim=0)) / count
        kernel_dtype = acc if weight is None else weight.dtype
        y = F.batch_norm(
            x, mean.to(kernel_dtype), var.to(kernel_dtype), weight, bias, False, 0.0, eps
        )
        unbiased = var * count / (count - 1).clamp_min(1)
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps), count)
        ctx.group = group
        ctx.mark_non_differentiable(mean, unbiased)
        return y, mean, unbiased

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_: torch.Tensor) -> tuple:  # type: ignore[override]
        x, weight, mean, invstd, count = ctx.saved_tensors
        dims = [0, *range(2, x.dim())]
        centred, shift = _centred(x, mean)
        acc = mean.dtype
        sum_dy = grad.sum(dims, dtype=acc)
        sum_dy_xmu = centred.to(acc, copy=True).mul_(grad).sum(dims) + shift * sum_dy
        scale = invstd if weight is None else weight.to(acc) * invstd
        grad_weight = grad_bias = grad_x = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (sum_dy_xmu * invstd).to(weight.dtype)  # local: DDP sums the ranks
        if weight is not None and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(weight.dtype)
        if ctx.needs_input_grad[0]:
            total = torch.cat([sum_dy, sum_dy_xmu])
            if world_size(ctx.group) > 1:
                dist.all_reduce(total, group=ctx.group)
            mean_dy, mean_dy_xmu = (total / count).chunk(2)
            slope = -scale * invstd.square() * mean_dy_xmu
            offset = -scale * mean_dy + shift * slope
            # dx = scale·dy + slope·(x - mean) + offset, in float32 and rounded once
            grad_x = torch.addcmul(_per_channel(offset, x), grad, _per_channel(scale, x))
            grad_x = grad_x.addcmul_(centred, _per_channel(slope, x)).to(x.dtype)
        return grad_x, grad_weight, grad_bias, None, None


def global_batch_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    group: ProcessGroup = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode batch norm of ``x`` (N×C×…) over the batch of every rank in ``group``.

    Returns the output (``x``'s dtype and layout) and the float32 global mean and unbiased
    variance (for the running statistics). Module docstring for the math.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _GlobalBatchNormFunction.apply(x, weight, bias, eps, group)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``BatchNorm{1,2,3}d`` whose training statistics span every rank of ``process_group``."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: ProcessGroup = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size(self.process_group) == 1:
            return super().forward(x)
        self._check_input_dim(x)
        y, mean, var = global_batch_norm(x, self.weight, self.bias, self.eps, self.process_group)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                if self.momentum is None:  # cumulative average, as BatchNorm (no host read)
                    factor: float | torch.Tensor = 1.0 / self.num_batches_tracked
                else:
                    factor = self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(var.to(self.running_var.dtype), factor)
        return y


def convert_to_global_batchnorm(module: nn.Module, process_group: ProcessGroup = None) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (in place) by a ``GlobalBatchNorm`` over
    ``process_group`` (default: all ranks)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            replacement = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                process_group,
            )
            replacement.load_state_dict(child.state_dict())
            # A frozen layer stays frozen (an EMA teacher's: DDP would wait for its gradients).
            for new, old in zip(replacement.parameters(), child.parameters(), strict=True):
                new.requires_grad_(old.requires_grad)
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            convert_to_global_batchnorm(child, process_group)
    return module
