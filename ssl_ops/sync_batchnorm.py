"""Batch normalization over the global batch, on any device and backend (gloo included).

torch's ``SyncBatchNorm`` runs only on CUDA tensors. Multi-worker CPU runs use
``GlobalBatchNorm`` instead: per-channel sums, sums of squares and counts are all-reduced with
a differentiable all-reduce, so the statistics — and their gradients — are those of one
process holding the whole global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import all_reduce_with_grad, world_size


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``BatchNorm{1,2,3}d`` whose training statistics span every rank's batch."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        reduce_dims = [0, *range(2, x.dim())]
        local = torch.cat(
            [
                x.sum(reduce_dims),
                x.square().sum(reduce_dims),
                x.new_full((1,), x.numel() / channels),
            ]
        )
        total = all_reduce_with_grad(local)
        count = total[-1]
        mean = total[:channels] / count
        var = total[channels : 2 * channels] / count - mean.square()  # biased, as BN normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                unbiased = var * count / (count - 1)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(unbiased, momentum)
                self.num_batches_tracked += 1
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (in place) by a ``GlobalBatchNorm``."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            replacement = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            convert_to_global_batchnorm(child)
    return module
