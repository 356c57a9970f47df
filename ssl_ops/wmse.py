"""W-MSE: whitening followed by an MSE between views.

Ermolov, Siarohin, Sangineto, Sebe, "Whitening for Self-Supervised Representation Learning",
ICML 2021 (https://arxiv.org/abs/2007.06346), eq. (2)-(5), with the semantics of the official
``whitening.py`` / ``wmse.py``. For each of ``w_iter`` slicings, one random permutation of the
(global) batch indices, shared by all d views, is cut into sub-batches B of ``w_size`` rows; each
view's sub-batch V is whitened on its own:

    μ_V = mean of V,   Σ_V = (V - μ_V)ᵀ(V - μ_V)/(w_size - 1),   Σ̃ = (1 - ε)Σ_V + εI
    Σ̃ = L Lᵀ (Cholesky),   ŵ_i = L⁻¹ (v_i - μ_V)                (triangular solve)

so the whitened sub-batch has identity covariance; gradients flow through μ_V and L. The loss
over the d(d-1)/2 view pairs (k, l) is

    loss = 1/(w_iter · d(d-1)/2) Σ_iter Σ_{k<l} 1/N Σ_i (2 - 2·cos(ŵᵏ_i, ŵˡ_i))

(``normalize=True``, the official ``norm_mse_loss``) or the plain MSE (mean over rows and
dimensions) of the whitened vectors with ``normalize=False``.

Checked against the official code (htdt/self-supervised ``methods/whitening.py``
``Whitening2d``, ``methods/w_mse.py`` ``WMSE.forward``, ``methods/norm_mse.py``): same covariance
(1/(m-1)), same shrinkage (1 - ε)Σ + εI with ε = 0 by default (``--w_eps``), same whitening
matrix L⁻¹ (the official code forms it with ``solve_triangular(L, I)`` and applies it as a 1×1
convolution; we solve against the centred rows directly, the same numbers), the same
permutation shared by the views and loss normalisation 1/(w_iter·pairs). Differences: the
official script runs on one GPU and permutes its own batch with the global RNG; here the
permutation spans the gathered global batch (rank 0's draw, from ``generator`` if given). A
sub-batch whose covariance is not positive definite (the official ``torch.linalg.cholesky``
raises) makes the loss NaN, decided on the device with no host sync, so the trainer's
non-finite guard stops the run at its next sync point; inside ``checks.strict_checks()`` it
raises ``NotPositiveDefiniteError`` on every rank instead. The official head normalises all
views together (its BN sees ``torch.cat`` of the views) — a property of the projector, not of
this loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import torch
import torch.nn.functional as F

from ._common import full_precision, l2_normalize, prepare
from .checks import NotPositiveDefiniteError, ranks_at_fault, strict
from .distributed import shared_randperm


def whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Cholesky-whiten the rows of ``x`` (…xmxD), batched over leading dimensions; all NaN
    when a covariance is not positive definite (module docstring)."""
    m, d = x.shape[-2:]
    centred = x - x.mean(dim=-2, keepdim=True)
    cov = centred.transpose(-1, -2) @ centred / (m - 1)
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    factor, info = torch.linalg.cholesky_ex((1 - eps) * cov + eps * eye)
    failed = (info > 0).any()
    if strict() and ranks_at_fault(failed.reshape(1))[0]:
        raise NotPositiveDefiniteError(
            "wmse_loss: a sub-batch covariance is not positive definite (collapsed or "
            "linearly dependent embeddings); use eps > 0 or a larger w_size"
        )
    solved = torch.linalg.solve_triangular(factor, centred.transpose(-1, -2), upper=False)
    return solved.transpose(-1, -2) + torch.where(failed, math.nan, 0.0).to(x.dtype)


@full_precision
def wmse_loss(
    views: Sequence[torch.Tensor],
    *,
    w_size: int = 128,
    w_iter: int = 1,
    eps: float = 0.0,
    normalize: bool = True,
    generator: torch.Generator | None = None,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """W-MSE loss of a list of d ≥ 2 NxD views (module docstring for the formula).

    ``generator`` drives the slicing permutation; under torch.distributed rank 0's
    permutation is used on every rank.
    """
    if len(views) < 2:
        raise ValueError(f"wmse_loss: needs at least two views, got {len(views)}")
    gathered = prepare("wmse_loss", *views)
    n, d = gathered[0].shape
    if w_size <= d:
        raise ValueError(
            f"wmse_loss: w_size ({w_size}) must exceed the embedding dimension ({d}), "
            "otherwise the sub-batch covariance is singular"
        )
    if n % w_size:
        raise ValueError(
            f"wmse_loss: the (global) batch size {n} is not divisible by w_size {w_size}"
        )
    pairs = list(combinations(range(len(gathered)), 2))
    total = gathered[0].new_zeros(())
    for _ in range(w_iter):
        blocks = shared_randperm(n, device=gathered[0].device, generator=generator)
        blocks = blocks.view(-1, w_size)
        whitened = [whiten(z[blocks], eps).flatten(0, 1) for z in gathered]
        for first, second in pairs:
            a, b = whitened[first], whitened[second]
            if normalize:
                total = total + (2 - 2 * (l2_normalize(a) * l2_normalize(b)).sum(dim=1)).mean()
            else:
                total = total + F.mse_loss(a, b)
    loss = total / (w_iter * len(pairs))
    return (loss, {"wmse": loss.detach()}) if return_terms else loss
