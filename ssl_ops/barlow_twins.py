"""Barlow Twins: redundancy reduction on the cross-correlation matrix.

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021 (https://arxiv.org/abs/2103.03230), eq. (1)-(2), with the semantics of the
official ``main.py`` (facebookresearch/barlowtwins, ``BarlowTwins.forward``). Each view is
batch-normalised per dimension over the global batch (biased variance, ε = 1e-5, no affine
parameters):

    ẑ_{:,a} = (z_{:,a} - mean_a) / sqrt(var_a + ε)
    C       = ẑ¹ᵀ ẑ² / N                                          DxD cross-correlation
    loss    = Σ_a (C_aa - 1)² + λ·Σ_{a≠b} C_ab²

Gradient scale. The official code sums the per-rank ``c / batch_size`` with a plain
``torch.distributed.all_reduce``, which autograd does not see: each rank back-propagates the
global loss through its own samples only (the SyncBatchNorm layers carry the cross-rank terms),
so the ranks together hold the full-batch gradient once and DDP's averaging divides it by the
number of processes W. Its published hyperparameters (LARS, lr 0.2 for weights and 0.0048 for
biases and BN, λ = 0.0051, batch 2048 on 16 GPUs per the repository's README, 32 in the paper)
were tuned with that 1/W gradient. (Before June 2021 the script multiplied the loss by
``--scale-loss`` 0.024 instead of having a bias learning rate; 0.0048 = 0.2 × 0.024.)

Here the batch is gathered with ``gather_with_grad`` before normalisation, so by default
(``scaling="full_batch"``) the gradient is that of the full-batch loss whatever the number of
processes. ``scaling="official"`` divides the gradient (not the loss value) by W, which is
exactly what ``main.py`` computes on the same number of processes. Under LARS the two differ only
through the excluded parameters and weight decay: "official" on W processes equals "full_batch"
with the weight decay multiplied by W and the bias/BN learning rate divided by W.

``loss_precision`` ("fp32", "tf32", "bf16") is the precision of the DxD GEMM; the official code
runs it under ``torch.cuda.amp.autocast`` (float16).
"""

from __future__ import annotations

import torch

from ._common import check_precision, cross_matmul, full_precision, off_diagonal, prepare
from .distributed import world_size

SCALINGS = ("full_batch", "official")


def batch_normalize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension standardisation over the batch with the biased variance."""
    centred = z - z.mean(dim=0)
    return centred / torch.sqrt(centred.pow(2).mean(dim=0) + eps)


@full_precision
def barlow_twins_terms(
    z1: torch.Tensor, z2: torch.Tensor, *, loss_precision: str = "fp32"
) -> dict[str, torch.Tensor]:
    """Unweighted on-diagonal and off-diagonal sums of the cross-correlation matrix."""
    check_precision("barlow_twins_loss", loss_precision)
    z1, z2 = prepare("barlow_twins_loss", z1, z2)
    c = cross_matmul(batch_normalize(z1), batch_normalize(z2), loss_precision) / z1.shape[0]
    return {
        "on_diagonal": (c.diagonal() - 1).pow(2).sum(),
        "off_diagonal": off_diagonal(c).pow(2).sum(),
    }


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged in value, its gradient multiplied by ``factor``."""
    return x * factor + (x * (1 - factor)).detach()


def barlow_twins_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    lambd: float = 0.0051,
    scaling: str = "full_batch",
    loss_precision: str = "fp32",
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Barlow Twins loss of two NxD views (official λ = 0.0051 by default).

    ``scaling``: "full_batch" (the full-batch gradient) or "official" (that gradient divided by
    the number of processes, as the official ``main.py``); the loss value is the same.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"barlow_twins_loss: scaling must be one of {list(SCALINGS)}")
    terms = barlow_twins_terms(z1, z2, loss_precision=loss_precision)
    loss = terms["on_diagonal"] + lambd * terms["off_diagonal"]
    if scaling == "official":
        loss = scale_gradient(loss, 1.0 / world_size())
    return (loss, terms) if return_terms else loss
