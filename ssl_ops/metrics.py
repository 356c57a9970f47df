"""Monitoring metrics of embedding quality and collapse, over the global batch.

- Per-dimension standard deviation (mean and min over dimensions): a collapsed dimension has
  std → 0 (the quantity VICReg's variance term hinges on).
- RankMe, Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the Downstream Performance of
  Pretrained Self-Supervised Representations by Their Rank", ICML 2023, eq. (1): with singular
  values s_k of the NxD embedding matrix,

      p_k = s_k/‖s‖₁ + ε,      RankMe(Z) = exp(-Σ_k p_k log p_k),   ε = 1e-7

  The s_k are the square roots of the eigenvalues of the smaller Gram matrix, ZᵀZ (DxD) or ZZᵀ
  (NxN): one GEMM and a symmetric eigensolver instead of an SVD of the NxD matrix. Both run in
  float64: a float32 Gram puts a noise floor of about sqrt(2⁻²³)·s_max ≈ 3·10⁻⁴·s_max under
  every singular value, which would lift the RankMe of a low-rank embedding.

- Alignment and uniformity, Wang & Isola, "Understanding Contrastive Representation Learning
  through Alignment and Uniformity on the Hypersphere", ICML 2020, eq. (4)-(5), on unit vectors:

      alignment  = 1/N Σ_i ‖u¹_i - u²_i‖^alpha                         alpha = 2
      uniformity = log( 2/(N(N-1)) Σ_{i<j} exp(-t‖u_i - u_j‖²) )    t = 2
"""

from __future__ import annotations

import math

import torch

from ._common import full_precision, l2_normalize, prepare


@full_precision
def embedding_std(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and minimum over dimensions of the per-dimension (unbiased) std."""
    (z,) = prepare("embedding_std", z)
    std = z.std(dim=0)
    return {"std_mean": std.mean(), "std_min": std.min()}


@full_precision
def rankme(z: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """RankMe effective rank of the NxD embedding matrix (between 1 and min(N, D))."""
    (z,) = prepare("rankme", z, min_batch=1)
    z64 = z.double()
    gram = z64.T @ z64 if z.shape[1] <= z.shape[0] else z64 @ z64.T
    sigma = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    p = sigma / sigma.sum().clamp_min(torch.finfo(sigma.dtype).tiny) + eps
    return torch.exp(-(p * p.log()).sum()).to(z.dtype)


@full_precision
def alignment(z1: torch.Tensor, z2: torch.Tensor, *, alpha: float = 2.0) -> torch.Tensor:
    """Mean ‖u¹_i - u²_i‖^alpha of the unit-normalised positive pairs."""
    z1, z2 = prepare("alignment", z1, z2, min_batch=1)
    return (l2_normalize(z1) - l2_normalize(z2)).norm(dim=1).pow(alpha).mean()


@full_precision
def uniformity(z: torch.Tensor, *, t: float = 2.0) -> torch.Tensor:
    """log of the mean Gaussian potential exp(-t‖u_i - u_j‖²) over pairs i < j."""
    (z,) = prepare("uniformity", z)
    sq_dist = torch.pdist(l2_normalize(z)).pow(2)
    return (-t * sq_dist).logsumexp(dim=0) - math.log(sq_dist.numel())
