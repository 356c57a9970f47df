"""NT-Xent (SimCLR) and its duality-paper variants.

Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (https://arxiv.org/abs/2002.05709), eq. (1); multi-view form as in
solo-learn's ``simclr_loss_func``. With d views of N images stacked into M = d·N unit rows u
(u = z/‖z‖, cosine similarity c_ab = u_a·u_b), positives P(a) = the other views of a's image and
negatives N(a) = the views of every other image:

    L_a  = -log [ Σ_{p∈P(a)} exp(c_ap/τ) / Σ_{b≠a} exp(s_ab/τ) ]
    loss = 1/M Σ_a L_a,      s_ab = c_ab for b ∈ P(a),  s_ab = φ(c_ab) for b ∈ N(a)

φ is the identity for SimCLR, |·| for SimCLR-abs and (·)² for SimCLR-sq (Garrido et al.,
"On the duality between contrastive and non-contrastive self-supervised learning", ICLR 2023,
section 5). With ``standardize_dims=True`` each view is first standardised along the batch
(Garrido et al.): every column is centred and scaled to norm sqrt(N/D), so that the rows have
mean squared norm 1, before the rows are L2-normalised as above.

Scale. The loss above is the mean over all M = d·N anchors (solo-learn's
``simclr_loss_func``). The official code (google-research/simclr, ``tf2/objective.py``
``add_contrastive_loss``) returns ``reduce_mean(loss_a + loss_b)``: the SUM of the two
directions, averaged over the N images, i.e. d = 2 times our value; its hyperparameters were
tuned at that scale (with LARS it matters for the weight decay relative to the gradient, the
parameters excluded from the adaptation, and optimizers other than LARS, where weight decay is
added to that loss in ``tf2/model.py``). ``reduction="view_sum"`` gives it:

    loss = 1/N Σ_i Σ_{v=1..d} L_{(v,i)}  =  d · (mean over anchors)

Both log-sums are evaluated with log-sum-exp in float32 (float64 kept), autocast disabled;
every rank computes the loss over all M anchors of the global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ._common import full_precision, l2_normalize, masked_logsumexp, prepare

# ``reduction`` -> factor on the mean over anchors, given the number of views d.
REDUCTIONS: dict[str, Callable[[int], int]] = {"mean": lambda d: 1, "view_sum": lambda d: d}

NEGATIVE_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda c: c,
    "abs": torch.abs,
    "square": torch.square,
}


def standardize_dims(z: torch.Tensor) -> torch.Tensor:
    """Centre each column and scale it to norm sqrt(N/D) (Garrido et al., ICLR 2023)."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    return centred * ((n / d) ** 0.5 / centred.norm(dim=0).clamp_min(1e-12))


class ContrastiveLogits:
    """Similarity logits of stacked views and the positive/negative masks over them."""

    def __init__(
        self,
        name: str,
        views: Sequence[torch.Tensor],
        *,
        temperature: float,
        negative_transform: str = "none",
        standardize: bool = False,
    ) -> None:
        if len(views) < 2:
            raise ValueError(f"{name}: needs at least two views, got {len(views)}")
        if negative_transform not in NEGATIVE_TRANSFORMS:
            raise ValueError(
                f"{name}: negative_transform must be one of {sorted(NEGATIVE_TRANSFORMS)}"
            )
        gathered = prepare(name, *views)
        if standardize:
            gathered = [standardize_dims(z) for z in gathered]
        u = l2_normalize(torch.cat(gathered))
        n, m = gathered[0].shape[0], u.shape[0]
        image = torch.arange(n, device=u.device).repeat(len(views))
        same_image = image[:, None] == image[None, :]
        self_mask = torch.eye(m, dtype=torch.bool, device=u.device)
        self.positive = same_image & ~self_mask
        self.negative = ~same_image
        self.not_self = ~self_mask
        cosine = u @ u.T
        transformed = NEGATIVE_TRANSFORMS[negative_transform](cosine)
        self.logits = torch.where(self.negative, transformed, cosine) / temperature


@full_precision
def _nt_xent(
    views: Sequence[torch.Tensor],
    *,
    temperature: float,
    negative_transform: str,
    standardize: bool,
    reduction: str,
    return_terms: bool,
    name: str,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {sorted(REDUCTIONS)}")
    sim = ContrastiveLogits(
        name,
        views,
        temperature=temperature,
        negative_transform=negative_transform,
        standardize=standardize,
    )
    positive = masked_logsumexp(sim.logits, sim.positive).mean()
    partition = masked_logsumexp(sim.logits, sim.not_self).mean()
    loss = (partition - positive) * REDUCTIONS[reduction](len(views))
    terms = {"positive_logit": positive.detach(), "log_partition": partition.detach()}
    return (loss, terms) if return_terms else loss


def nt_xent_loss(
    views: Sequence[torch.Tensor],
    *,
    temperature: float = 0.1,
    standardize: bool = False,
    reduction: str = "mean",
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimCLR's NT-Xent over a list of NxD views (module docstring for the formula).

    ``reduction``: "mean" over the d·N anchors, or "view_sum" (d times it), the official scale.
    """
    return _nt_xent(
        views,
        temperature=temperature,
        negative_transform="none",
        standardize=standardize,
        reduction=reduction,
        return_terms=return_terms,
        name="nt_xent_loss",
    )


def simclr_abs_loss(
    views: Sequence[torch.Tensor],
    *,
    temperature: float = 0.1,
    standardize: bool = False,
    reduction: str = "mean",
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimCLR-abs: negatives enter the log-sum-exp as |c_ab|/τ."""
    return _nt_xent(
        views,
        temperature=temperature,
        negative_transform="abs",
        standardize=standardize,
        reduction=reduction,
        return_terms=return_terms,
        name="simclr_abs_loss",
    )


def simclr_sq_loss(
    views: Sequence[torch.Tensor],
    *,
    temperature: float = 0.1,
    standardize: bool = False,
    reduction: str = "mean",
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimCLR-sq: negatives enter the log-sum-exp as c_ab²/τ."""
    return _nt_xent(
        views,
        temperature=temperature,
        negative_transform="square",
        standardize=standardize,
        reduction=reduction,
        return_terms=return_terms,
        name="simclr_sq_loss",
    )
