"""BYOL: Bootstrap Your Own Latent, its regression loss and momentum target.

Grill, Strub, Altché, Tallec, Richemond, Buchatskaya, Doersch, Pires, Guo, Azar, Piot, Kavukcuoglu,
Munos, Valko, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020
(https://arxiv.org/abs/2006.07733), eq. (2) and section 3.1, with the semantics of the official
code (google-deepmind/deepmind-research ``byol/byol_experiment.py`` ``loss_fn``,
``byol/utils/helpers.py`` ``regression_loss`` / ``l2_normalize``, ``byol/utils/schedules.py``
``target_ema``). With the online predictions p¹, p² of the two views and the target projections
t¹, t² (stop-gradient: the target network gets no gradient from the loss),

    ℓ(p, t) = ‖p/‖p‖ - t/‖t‖‖² = 2 - 2·cos(p, t)
    loss    = 1/N Σ_i [ ℓ(p¹_i, sg(t²_i)) + ℓ(p²_i, sg(t¹_i)) ]        (0 ≤ loss ≤ 8)

the sum of the two directions averaged over the batch, as ``repr_loss`` in ``loss_fn``
(normalisation x·rsqrt(max(‖x‖², 10⁻¹²)), as ``helpers.l2_normalize``).

The loss is a mean of per-sample terms and spans nothing: under torch.distributed each rank
evaluates its own samples, the value is the rank's mean, and DDP's gradient averaging (the
official ``pmean`` of the gradients) makes the step that of the mean over the global batch.

After each optimizer step the target parameters ξ follow the online parameters θ,

    ξ ← τ·ξ + (1 - τ)·θ,      τ_k = 1 - (1 - τ_base)·(cos(π·k/K) + 1)/2,   τ_base = 0.996

with k the step (clipped to K, the total number of steps), ``target_ema``. Only parameters
follow: the target's batch-norm statistics are its own (the official target network runs in
training mode and keeps its own state).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_embeddings, full_precision
from .backbones import mlp
from .checks import check_batch
from .method import Batch, MethodOutput, MethodSettings, Progress, SSLMethod, load_attribute

if TYPE_CHECKING:
    from .catalog import MethodCard


def _regression(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """‖p̂ - t̂‖² per row, t detached (eps 10⁻⁶ on the norm = 10⁻¹² on its square)."""
    unit_t = F.normalize(t.detach(), dim=-1, eps=1e-6)
    return (F.normalize(p, dim=-1, eps=1e-6) - unit_t).pow(2).sum(dim=-1)


@full_precision
def byol_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    t1: torch.Tensor,
    t2: torch.Tensor,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BYOL loss of the online predictions ``p1``, ``p2`` and target projections ``t1``, ``t2``
    (all NxD, view 1 then view 2; the targets are detached here). Module docstring."""
    check_embeddings("byol_loss", p1, p2, t1, t2)
    check_batch("byol_loss", p1.shape[0], minimum=1)
    per_sample = _regression(p1, t2) + _regression(p2, t1)
    loss = per_sample.mean()
    terms = {"cosine": (1 - per_sample.detach().mean() / 4)}  # mean cos over both directions
    return (loss, terms) if return_terms else loss


def cosine_momentum(step: int, total_steps: int, base_tau: float = 0.996) -> float:
    """τ_k = 1 - (1 - τ_base)·(cos(π·k/K) + 1)/2 with k = min(step, K): τ_base at step 0, 1 at K."""
    if total_steps <= 0:
        raise ValueError(f"cosine_momentum: total_steps must be positive, got {total_steps}")
    progress = min(step, total_steps) / total_steps
    return 1 - (1 - base_tau) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """ξ ← τ·ξ + (1 - τ)·θ for every parameter of ``target`` and its twin in ``online`` (one
    multi-tensor kernel; buffers untouched). Both modules must have the same parameters."""
    targets, onlines = dict(target.named_parameters()), dict(online.named_parameters())
    mismatched = [
        name
        for name in targets.keys() | onlines.keys()
        if name not in targets or name not in onlines or targets[name].shape != onlines[name].shape
    ]
    if mismatched:
        raise ValueError(f"momentum_update: target and online differ at {sorted(mismatched)}")
    names = list(targets)
    torch._foreach_lerp_([targets[n] for n in names], [onlines[n] for n in names], 1 - tau)


class BYOL(SSLMethod):
    """The online network (backbone, projector, predictor) trained by ``byol_loss`` against a
    momentum target (a copy of backbone and projector, no gradient), which follows the online
    weights after each optimizer step with τ on ``cosine_momentum``. Projector and predictor
    are the official MLPs (Linear-BN-ReLU-Linear without a bias on the output layer;
    byol/utils/networks.py ``MLP``).

    Options: ``predictor_hidden`` (the predictor's hidden width, 4096; its output has the
    projector's), ``base_momentum`` (τ_base, 0.996).
    """

    def __init__(self, card: MethodCard, settings: MethodSettings) -> None:
        super().__init__()
        options = settings.options
        self.objective = load_attribute(card.objective)
        self.base_momentum = float(options["base_momentum"])
        self.backbone = settings.make_backbone()
        self.projector = self.build_projector(self.backbone.feature_dim, settings.projector)
        dim = settings.projector[-1]
        hidden = int(options["predictor_hidden"])
        self.predictor = mlp(dim, (hidden, dim))
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def forward(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features = [self.backbone(view) for view in views]
        projections = [self.projector(f) for f in features]
        p1, p2 = (self.predictor(z) for z in projections)
        with torch.no_grad():
            t1, t2 = (self.target_projector(self.target_backbone(view)) for view in views)
        loss, terms = self.objective(p1, p2, t1, t2, return_terms=True)
        return MethodOutput({"loss": loss, **terms}, projections[0].detach(), features[0].detach())

    def after_step(self, progress: Progress) -> None:
        # τ of the 0-based step being taken, as ``_update_fn`` evaluates ``target_ema`` at
        # the step's ``global_step`` before incrementing it.
        tau = cosine_momentum(progress.step, progress.total_steps, self.base_momentum)
        momentum_update(self.target_backbone, self.backbone, tau)
        momentum_update(self.target_projector, self.projector, tau)
