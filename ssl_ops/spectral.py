"""Spectral contrastive loss.

HaoChen, Wei, Gaidon, Ma, "Provable Guarantees for Self-Supervised Deep Learning with Spectral
Contrastive Loss", NeurIPS 2021 (https://arxiv.org/abs/2106.04156), eq. (4), with the radial
clipping of the official code. Each embedding is first clipped to norm at most sqrt(μ):

    z ← z · min(1, sqrt(μ)/‖z‖)
    loss = ( -2/N Σ_i z¹_i·z²_i + 1/(N(N-1)) Σ_{i≠j} (z¹_i·z²_j)² ) / μ

Σ_{i≠j}(z¹_i·z²_j)² is evaluated as ⟨z¹ᵀz¹, z²ᵀz²⟩_F - Σ_i (z¹_i·z²_i)² when D < N (else via the
NxN product), never materialising an NxNxD tensor. N is the global batch under torch.distributed.
"""

from __future__ import annotations

import math

import torch

from ._common import cross_gram_sq_sum, full_precision, prepare


def radial_clip(z: torch.Tensor, radius: float) -> torch.Tensor:
    """Project rows with norm above ``radius`` onto the sphere of that radius."""
    norm = z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return z * (radius / norm).clamp(max=1.0)


@full_precision
def spectral_contrastive_terms(
    z1: torch.Tensor, z2: torch.Tensor, *, mu: float = 1.0
) -> dict[str, torch.Tensor]:
    """The attraction (-2/N Σ z¹_i·z²_i) and repulsion terms, both before the 1/μ."""
    z1, z2 = prepare("spectral_contrastive_loss", z1, z2)
    z1, z2 = radial_clip(z1, math.sqrt(mu)), radial_clip(z2, math.sqrt(mu))
    n = z1.shape[0]
    positive = (z1 * z2).sum(dim=1)
    repulsion = (cross_gram_sq_sum(z1, z2) - positive.pow(2).sum()) / (n * (n - 1))
    return {"attraction": -2.0 * positive.mean(), "repulsion": repulsion}


def spectral_contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    mu: float = 1.0,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Spectral contrastive loss of two NxD views (module docstring for the formula)."""
    terms = spectral_contrastive_terms(z1, z2, mu=mu)
    loss = (terms["attraction"] + terms["repulsion"]) / mu
    return (loss, terms) if return_terms else loss
