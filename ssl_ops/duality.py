"""Sample- and dimension-contrastive criteria and the VICReg-exp / VICReg-ctr variants.

Garrido, Chen, Bardes, Najman, LeCun, "On the duality between contrastive and non-contrastive
self-supervised learning", ICLR 2023 (https://arxiv.org/abs/2206.02574).

For an NxD embedding matrix X with rows x_i (samples) and columns x_{:,a} (dimensions),
Definitions 3.1 and 3.2:

    L_c(X)  = Σ_{i≠j} (x_i·x_j)²                 sample-contrastive
    L_nc(X) = Σ_{a≠b} (x_{:,a}·x_{:,b})²         dimension-contrastive

Since ‖XXᵀ‖²_F = ‖XᵀX‖²_F, Proposition 3.2 holds exactly:
L_nc + Σ_a ‖x_{:,a}‖⁴ = L_c + Σ_i ‖x_i‖⁴.

VICReg-exp (section 5) replaces VICReg's covariance term by a log-sum-exp over each row of the
covariance matrix C = (Z - Z̄)ᵀ(Z - Z̄)/(N - 1):

    e(Z)  = 1/D Σ_a log Σ_{b≠a} exp(C_ab / τ)
    loss  = λ·MSE(Z, Z') + μ·(v(Z) + v(Z'))/2 + nu·(e(Z) + e(Z'))

with v the VICReg variance hinge. VICReg-ctr applies the same regulariser to Zᵀ, so dimensions
and samples swap roles and the statistics become the (uncentred) sample Gram matrix
G = Z Zᵀ/(D - 1):

    v_ctr(Z) = 1/N Σ_i relu(1 - sqrt(G_ii + ε))            hinge on the embedding norms
    e_ctr(Z) = 1/N Σ_i log Σ_{j≠i} exp(G_ij / τ)           contrastive over samples
    loss     = λ·MSE(Z, Z') + μ·(v_ctr(Z) + v_ctr(Z'))/2 + nu·(e_ctr(Z) + e_ctr(Z'))

The paper does not fix τ for these variants in its main text; τ = 0.1 is our default.
All statistics use the global batch under torch.distributed. ``loss_precision`` ("fp32", "tf32",
"bf16") sets the precision of the DxD covariance (VICReg-exp) or NxN Gram (VICReg-ctr) GEMMs,
as for ``vicreg_loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (
    check_precision,
    cross_gram_sq_sum,
    full_precision,
    gram,
    offdiag_logsumexp,
    prepare,
)
from .checks import check_finite
from .distributed import gather_with_grad
from .vicreg import covariance_matrix, variance_term


def _gathered(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name}: expected an NxD tensor, got shape {tuple(x.shape)}")
    check_finite(name, x)
    return gather_with_grad(x)


@full_precision
def sample_contrastive_criterion(x: torch.Tensor) -> torch.Tensor:
    """L_c(X) = Σ_{i≠j} (x_i·x_j)² over the rows of the (global) batch."""
    x = _gathered("sample_contrastive_criterion", x)
    return cross_gram_sq_sum(x, x) - x.pow(2).sum(dim=1).pow(2).sum()


@full_precision
def dimension_contrastive_criterion(x: torch.Tensor) -> torch.Tensor:
    """L_nc(X) = Σ_{a≠b} (x_{:,a}·x_{:,b})² over the columns of the (global) batch."""
    x = _gathered("dimension_contrastive_criterion", x)
    return cross_gram_sq_sum(x, x) - x.pow(2).sum(dim=0).pow(2).sum()


def _weighted(
    terms: dict[str, torch.Tensor], sim_coeff: float, std_coeff: float, cov_coeff: float
) -> torch.Tensor:
    return (
        sim_coeff * terms["invariance"]
        + std_coeff * terms["variance"]
        + cov_coeff * terms["exp_covariance"]
    )


@full_precision
def vicreg_exp_terms(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    eps: float = 1e-4,
    loss_precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """Unweighted invariance, variance and exp-covariance terms of VICReg-exp."""
    check_precision("vicreg_exp_loss", loss_precision)
    z1, z2 = prepare("vicreg_exp_loss", z1, z2)
    if z1.shape[1] < 2:
        raise ValueError("vicreg_exp_loss: needs D >= 2 (each row needs an off-diagonal entry)")

    def exp_term(z: torch.Tensor) -> torch.Tensor:
        return offdiag_logsumexp(covariance_matrix(z, loss_precision) / temperature).mean()

    return {
        "invariance": F.mse_loss(z1, z2),
        "variance": (variance_term(z1, eps) + variance_term(z2, eps)) / 2,
        "exp_covariance": exp_term(z1) + exp_term(z2),
    }


@full_precision
def vicreg_ctr_terms(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    eps: float = 1e-4,
    loss_precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """Unweighted invariance, norm-variance and exp-Gram terms of VICReg-ctr."""
    check_precision("vicreg_ctr_loss", loss_precision)
    z1, z2 = prepare("vicreg_ctr_loss", z1, z2)
    if z1.shape[1] < 2:
        raise ValueError("vicreg_ctr_loss: needs D >= 2 (the Gram matrix is divided by D - 1)")

    def sample_gram(z: torch.Tensor) -> torch.Tensor:
        return gram(z.T, loss_precision) / (z.shape[1] - 1)

    def norm_term(g: torch.Tensor) -> torch.Tensor:
        return F.relu(1.0 - torch.sqrt(g.diagonal() + eps)).mean()

    g1, g2 = sample_gram(z1), sample_gram(z2)
    return {
        "invariance": F.mse_loss(z1, z2),
        "variance": (norm_term(g1) + norm_term(g2)) / 2,
        "exp_covariance": offdiag_logsumexp(g1 / temperature).mean()
        + offdiag_logsumexp(g2 / temperature).mean(),
    }


def vicreg_exp_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    loss_precision: str = "fp32",
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg-exp loss (module docstring); ``return_terms`` adds the unweighted terms."""
    terms = vicreg_exp_terms(
        z1, z2, temperature=temperature, eps=eps, loss_precision=loss_precision
    )
    loss = _weighted(terms, sim_coeff, std_coeff, cov_coeff)
    return (loss, terms) if return_terms else loss


def vicreg_ctr_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    loss_precision: str = "fp32",
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg-ctr loss (module docstring); ``return_terms`` adds the unweighted terms."""
    terms = vicreg_ctr_terms(
        z1, z2, temperature=temperature, eps=eps, loss_precision=loss_precision
    )
    loss = _weighted(terms, sim_coeff, std_coeff, cov_coeff)
    return (loss, terms) if return_terms else loss
