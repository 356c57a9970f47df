"""SimSiam: Siamese representation learning with a stop-gradient and no negatives.

Chen, He, "Exploring Simple Siamese Representation Learning", CVPR 2021
(https://arxiv.org/abs/2011.10566), eq. (1)-(2) and Algorithm 1, with the semantics of the
official code (facebookresearch/simsiam ``main_simsiam.py``: ``criterion =
nn.CosineSimilarity(dim=1)``, ``loss = -(criterion(p1, z2).mean() + criterion(p2, z1).mean())
* 0.5``; ``simsiam/builder.py`` returns ``z1.detach(), z2.detach()``). With the predictions p¹, p²
and the projections z¹, z² of the two views,

    D(p, z) = -cos(p, sg(z)) = -p·z / (‖p‖·‖z‖)
    loss    = ½·1/N Σ_i D(p¹_i, z²_i) + ½·1/N Σ_i D(p²_i, z¹_i)          (-1 ≤ loss ≤ 1)

The projections z are detached here (the stop-gradient that keeps SimSiam from collapsing).
The loss is a mean of per-sample terms and spans nothing: under torch.distributed each rank
evaluates its own samples, the value is the rank's mean, and DDP's gradient averaging makes the
step that of the mean over the global batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ._common import check_embeddings, full_precision
from .backbones import mlp
from .checks import check_batch
from .method import Batch, MethodOutput, MethodSettings, SSLMethod, load_attribute

if TYPE_CHECKING:
    from .catalog import MethodCard


@full_precision
def simsiam_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimSiam loss of the predictions ``p1``, ``p2`` and projections ``z1``, ``z2`` (all NxD,
    view 1 then view 2; the projections are detached here). Module docstring."""
    check_embeddings("simsiam_loss", p1, p2, z1, z2)
    check_batch("simsiam_loss", p1.shape[0], minimum=1)
    cosine_12 = F.cosine_similarity(p1, z2.detach(), dim=1).mean()
    cosine_21 = F.cosine_similarity(p2, z1.detach(), dim=1).mean()
    loss = -(cosine_12 + cosine_21) * 0.5
    return (loss, {"cosine": -loss.detach()}) if return_terms else loss


class SimSiam(SSLMethod):
    """Backbone, projector and predictor on both views, ``simsiam_loss`` with the
    stop-gradient on the projections; no momentum network, no negatives. As the official
    ``simsiam/builder.py``: the projector is three bias-free Linear-BN layers (ReLU between)
    ending in a BN without affine parameters, the predictor a 512-d bottleneck
    (Linear-BN-ReLU-Linear).

    Options: ``predictor_hidden`` (the bottleneck width, 512; the output has the projector's),
    ``fix_predictor_lr`` (the predictor keeps the base lr outside the schedule, as the official
    README's command ``--fix-pred-lr``; default on).
    """

    def __init__(self, card: MethodCard, settings: MethodSettings) -> None:
        super().__init__()
        options = settings.options
        self.objective = load_attribute(card.objective)
        self.backbone = settings.make_backbone()
        self.projector = self.build_projector(
            self.backbone.feature_dim,
            settings.projector,
            hidden_bias=False,
            output_norm=True,
            output_affine=False,
        )
        dim, hidden = settings.projector[-1], int(options["predictor_hidden"])
        self.predictor = mlp(dim, (hidden, dim), hidden_bias=False, last_bias=True)
        self.fix_predictor_lr = bool(options["fix_predictor_lr"])

    def fixed_lr_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.predictor.parameters()) if self.fix_predictor_lr else []

    def forward(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        features = [self.backbone(view) for view in views]
        z1, z2 = (self.projector(f) for f in features)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss, terms = self.objective(p1, p2, z1, z2, return_terms=True)
        return MethodOutput({"loss": loss, **terms}, z1.detach(), features[0].detach())
