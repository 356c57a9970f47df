"""Barlow Twins: redundancy reduction on the cross-correlation matrix.

Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021 (https://arxiv.org/abs/2103.03230), eq. (1)-(2), with the semantics of the
official ``main.py``. Each view is batch-normalised per dimension over the global batch
(biased variance, ε = 1e-5, no affine parameters):

    ẑ_{:,a} = (z_{:,a} - mean_a) / sqrt(var_a + ε)
    C       = ẑ¹ᵀ ẑ² / N                                          DxD cross-correlation
    loss    = Σ_a (C_aa - 1)² + λ·Σ_{a≠b} C_ab²

The official code sums per-rank C with a plain ``all_reduce``, which carries no gradient for
the other ranks' samples (1/W of the true gradient). Here the batch is gathered with
``gather_with_grad`` before normalisation, so the gradient is that of the full-batch loss.
"""

from __future__ import annotations

import torch

from ._common import full_precision, off_diagonal, prepare


def batch_normalize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension standardisation over the batch with the biased variance."""
    centred = z - z.mean(dim=0)
    return centred / torch.sqrt(centred.pow(2).mean(dim=0) + eps)


@full_precision
def barlow_twins_terms(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unweighted on-diagonal and off-diagonal sums of the cross-correlation matrix."""
    z1, z2 = prepare("barlow_twins_loss", z1, z2)
    c = batch_normalize(z1).T @ batch_normalize(z2) / z1.shape[0]
    return {
        "on_diagonal": (c.diagonal() - 1).pow(2).sum(),
        "off_diagonal": off_diagonal(c).pow(2).sum(),
    }


def barlow_twins_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    lambd: float = 0.0051,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Barlow Twins loss of two NxD views (official λ = 0.0051 by default)."""
    terms = barlow_twins_terms(z1, z2)
    loss = terms["on_diagonal"] + lambd * terms["off_diagonal"]
    return (loss, terms) if return_terms else loss
