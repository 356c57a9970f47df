"""Joint-embedding methods: a backbone and a projector on every view, an objective on the
projections — VICReg and its duality variants, Barlow Twins, SimCLR, DCL, spectral contrastive,
W-MSE. The card names the objective (``ssl_ops.catalog``).

Options (``method_options`` in a spec):

- ``hidden_bias``: biases on the projector's hidden layers (VICReg keeps them; Barlow Twins'
  ``main.py`` and SimCLR's ``model_util.py`` have none, a batch norm follows).
- ``output_norm``: batch norm on the projector's output (the spectral contrastive head,
  jhaochenz/spectral_contrastive_learning ``models/backbones/resnet_mlp_norelu_3layer.py``;
  SimCLR's head ends in a scale-only BN, of which this is the nearest: β is learnt too).
- ``project_views_together``: one projector call on all views concatenated, so its batch norm
  normalises over every view at once, as W-MSE's official ``methods/w_mse.py`` does
  (``self.head(torch.cat(h))``); otherwise each view is projected on its own, as
  ``main_vicreg.py`` does.
- ``encode_views_together``: one backbone call per run of consecutive views of one size
  (all views of a pair; the global and the local crops of multi-crop), so batch norm spans
  them, as SimCLR's official code does (simclr@1.0 ``model.py``: the views are concatenated
  along the batch, ``(num_transforms * bsz, h, w, c)``, before the base network and the
  head) and multi-crop methods do per resolution; larger batches also keep a GPU busier.
  Otherwise each view has its own backbone call (``main_vicreg.py``).

``separate_branches`` (VICReg, Bardes et al. 2022, section 3: the two branches need not share
weights, nor even architecture): view 0 goes through ``backbone``/``projector``, view 1 through
a second backbone (``branch_backbone``, by default the same architecture) and projector of the
same widths. ``backbone`` — the first branch — is the one probed and exported.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .method import Batch, MethodOutput, MethodSettings, SSLMethod, load_attribute

if TYPE_CHECKING:
    from .catalog import MethodCard


class JointEmbedding(SSLMethod):
    def __init__(self, card: MethodCard, settings: MethodSettings) -> None:
        super().__init__()
        options = settings.options
        self.objective: Callable[..., Any] = load_attribute(card.objective)
        self.pairwise = card.pairwise
        self.loss_kwargs = dict(settings.loss)
        self.project_views_together = bool(options.get("project_views_together", False))
        self.encode_views_together = bool(options.get("encode_views_together", False))
        self.backbone = settings.make_backbone()
        self.projector = self.build_projector(
            self.backbone.feature_dim,
            settings.projector,
            hidden_bias=bool(options.get("hidden_bias", True)),
            output_norm=bool(options.get("output_norm", False)),
        )
        self.branch: nn.ModuleDict | None = None
        if settings.separate_branches:
            second = settings.make_backbone(settings.branch_backbone)
            assert self.head_spec is not None
            projector = self.head_spec.build(in_dim=second.feature_dim)
            self.branch = nn.ModuleDict({"backbone": second, "projector": projector})

    def view_features(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone features of every view (``encode_views_together``: see the module)."""
        if not self.encode_views_together:
            return [self.backbone(view) for view in views]
        features: list[torch.Tensor] = []
        for _, run in itertools.groupby(views, key=lambda view: view.shape[1:]):
            same_size = list(run)
            encoded = self.backbone(torch.cat(same_size))
            features += encoded.split([len(view) for view in same_size])
        return features

    def forward(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        if self.branch is not None:
            features = [self.backbone(views[0]), self.branch["backbone"](views[1])]
            projections = [self.projector(features[0]), self.branch["projector"](features[1])]
        else:
            features = self.view_features(views)
            if self.project_views_together:
                projections = list(self.projector(torch.cat(features)).split(len(views[0])))
            else:
                projections = [self.projector(f) for f in features]
        if self.pairwise:
            loss, terms = self.objective(*projections, return_terms=True, **self.loss_kwargs)
        else:
            loss, terms = self.objective(projections, return_terms=True, **self.loss_kwargs)
        return MethodOutput({"loss": loss, **terms}, projections[0].detach(), features[0].detach())
