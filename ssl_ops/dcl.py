"""Decoupled Contrastive Learning (DCL, DCLW) and the duality-paper abs/sq variants.

Yeh, Hong, Hsu, Liu, Chen, LeCun, "Decoupled Contrastive Learning", ECCV 2022
(https://arxiv.org/abs/2110.06848), eq. (6) and (7). With unit rows u = z/‖z‖ of the two views
(u¹, u²) of N images and cosine c(a, b) = a·b, the loss of anchor u¹_i removes the positive pair
from the denominator:

    L¹_i = -w_i·c(u¹_i, u²_i)/τ + log Σ_{k≠i} Σ_{v∈{1,2}} exp(φ(c(u¹_i, uᵛ_k))/τ)
    loss = 1/(2N) Σ_i (L¹_i + L²_i)                       (both directions averaged)

w_i = 1 for DCL; DCLW (``weighted=True``) uses the von Mises-Fisher weighting
w_i = 2 - N·softmax_i(c(u¹_i, u²_i)/sigma) on detached inputs. φ is the identity for DCL, |·| for
``dcl_abs_loss`` and (·)² for ``dcl_sq_loss`` (Garrido et al., ICLR 2023). Computed in float32
with log-sum-exp; N is the global batch under torch.distributed.
"""

from __future__ import annotations

import torch

from ._common import full_precision, masked_logsumexp
from .nt_xent import ContrastiveLogits


@full_precision
def _dcl(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float,
    weighted: bool,
    sigma: float,
    negative_transform: str,
    return_terms: bool,
    name: str,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sim = ContrastiveLogits(
        name, [z1, z2], temperature=temperature, negative_transform=negative_transform
    )
    # With two views each anchor has exactly one positive: its logit is the masked row sum.
    positive = (sim.logits * sim.positive).sum(dim=1)
    if weighted:
        n = sim.logits.shape[0] // 2
        cosine = positive[:n].detach() * temperature
        weight = 2.0 - n * torch.softmax(cosine / sigma, dim=0)
        positive = positive * weight.repeat(2)
    negative = masked_logsumexp(sim.logits, sim.negative)
    loss = (negative - positive).mean()
    terms = {"positive_logit": positive.mean().detach(), "log_negatives": negative.mean().detach()}
    return (loss, terms) if return_terms else loss


def dcl_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    weighted: bool = False,
    sigma: float = 0.5,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DCL (or DCLW with ``weighted=True``) of two NxD views; module docstring for the formula."""
    return _dcl(
        z1,
        z2,
        temperature=temperature,
        weighted=weighted,
        sigma=sigma,
        negative_transform="none",
        return_terms=return_terms,
        name="dcl_loss",
    )


def dcl_abs_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DCL with negatives entering the log-sum-exp as |c|/τ."""
    return _dcl(
        z1,
        z2,
        temperature=temperature,
        weighted=False,
        sigma=0.5,
        negative_transform="abs",
        return_terms=return_terms,
        name="dcl_abs_loss",
    )


def dcl_sq_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DCL with negatives entering the log-sum-exp as c²/τ."""
    return _dcl(
        z1,
        z2,
        temperature=temperature,
        weighted=False,
        sigma=0.5,
        negative_transform="square",
        return_terms=return_terms,
        name="dcl_sq_loss",
    )
