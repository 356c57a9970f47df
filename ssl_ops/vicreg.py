"""VICReg: Variance-Invariance-Covariance Regularization.

Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022 (https://arxiv.org/abs/2105.04906), eq. (1)-(6), with the
semantics of the official ``main_vicreg.py``:

    s(Z, Z')   = 1/(N·D) Σ_i ‖z_i - z'_i‖²                          invariance (MSE)
    v(Z)       = 1/D Σ_j relu(1 - sqrt(Var(z_{:,j}) + ε))             variance, unbiased Var
    c(Z)       = 1/D Σ_{i≠j} C(Z)_{ij}²,  C(Z) = (Z - Z̄)ᵀ(Z - Z̄)/(N - 1)
    loss       = λ·s + μ·(v(Z) + v(Z'))/2 + nu·(c(Z) + c(Z'))

All three terms use the global batch when torch.distributed runs with several processes.
The covariance term costs one DxD matmul per branch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import full_precision, off_diagonal, prepare


def variance_term(z: torch.Tensor, eps: float) -> torch.Tensor:
    """v(Z) of eq. (2): mean over dimensions of the hinge on the regularised std."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def covariance_matrix(z: torch.Tensor) -> torch.Tensor:
    """C(Z) of eq. (3) with the unbiased 1/(N-1) normalisation."""
    centred = z - z.mean(dim=0)
    return centred.T @ centred / (z.shape[0] - 1)


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    return off_diagonal(covariance_matrix(z)).pow(2).sum() / z.shape[1]


@full_precision
def vicreg_terms(
    z1: torch.Tensor, z2: torch.Tensor, *, eps: float = 1e-4
) -> dict[str, torch.Tensor]:
    """The unweighted invariance, variance and covariance terms over the global batch."""
    z1, z2 = prepare("vicreg_loss", z1, z2)
    return {
        "invariance": F.mse_loss(z1, z2),
        "variance": (variance_term(z1, eps) + variance_term(z2, eps)) / 2,
        "covariance": _covariance_term(z1) + _covariance_term(z2),
    }


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg loss of two NxD embedding batches (the official coefficients by default).

    With ``return_terms=True`` returns ``(loss, terms)`` where ``terms`` holds the unweighted
    invariance, variance and covariance values, for logging.
    """
    terms = vicreg_terms(z1, z2, eps=eps)
    loss = (
        sim_coeff * terms["invariance"]
        + std_coeff * terms["variance"]
        + cov_coeff * terms["covariance"]
    )
    return (loss, terms) if return_terms else loss
