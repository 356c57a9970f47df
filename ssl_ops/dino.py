"""DINO: self-distillation with no labels (Caron et al., ICCV 2021), as the official code trains
it (facebookresearch/dino @ 7c446df; ``main_dino.py``, ``vision_transformer.py``, ``utils.py``).

A student (backbone + ``DINOHead``) sees every crop; a teacher (an EMA copy, no gradient) sees
the global crops only (``main_dino.py:318``). With the teacher's centred, sharpened output
``q_g = softmax((t_g − c) / τ_t)`` of global crop g and the student's ``log softmax(s_v / τ_s)``
of crop v, the loss is the mean cross-entropy over every pair but the same view
(``DINOLoss.forward``, ``main_dino.py:380-404``)::

    loss = 1 / #{(g, v): v ≠ g} · Σ_g Σ_{v ≠ g} mean_n Σ_k −q_g[n, k] · log p_v[n, k]

State and schedules, each as the official code:

* the centre ``c`` follows the teacher outputs of the global batch: ``c ← m·c + (1 − m)·mean``
  with the mean taken over the teacher outputs of EVERY worker (``all_reduce`` of the sum,
  ``update_center``, ``main_dino.py:406-416``), m = 0.9, after the loss of each step;
* τ_t rises linearly from 0.04 to 0.07 over the first 30 epochs, then stays (``np.linspace`` over
  the epoch index, ``main_dino.py:374-378``; README "--teacher_temp 0.07
  --warmup_teacher_temp_epochs 30"); τ_s = 0.1;
* the teacher follows the student after every optimizer step with momentum
  ``m_it = 1 + (m_0 − 1)·(1 + cos(π·it/total))/2``, m_0 = 0.996 (``utils.cosine_scheduler``,
  ``main_dino.py:249-251, 346-350``), it = the 0-based step;
* between backward and the optimizer step, each parameter's gradient is clipped to norm 3.0 on
  its own (``utils.clip_gradients``, ``utils.py:132-141``), then the prototype layer's gradients
  are dropped during the first epoch (``utils.cancel_gradients_last_layer``, ``utils.py:144-149``,
  ``--freeze_last_layer 1``), in that order (``main_dino.py:331-335``).

Crops of one size go through the backbone together (``utils.MultiCropWrapper``, ``utils.py:594``);
the head then runs on all of them at once.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from ._common import full_precision
from .byol import cosine_momentum, momentum_update
from .distributed import world_size
from .heads import register_head
from .method import Batch, MethodOutput, MethodSettings, Progress, SSLMethod, load_attribute

if TYPE_CHECKING:
    from .catalog import MethodCard


@register_head("dino_head")
class DINOHead(nn.Module):
    """The DINO projection head (``vision_transformer.py:257-291``): Linear-GELU layers to a
    bottleneck (``dims``: hidden widths, then the bottleneck, 2048-2048-256), an L2
    normalisation, then a weight-normalised bias-free prototype layer of ``out_dim`` outputs
    whose norm g is fixed to 1 with ``norm_last_layer`` (``weight_g.requires_grad = False``).
    Linear weights start truncated-normal with std 0.02 and zero biases (``_init_weights``).
    ``use_bn`` puts a batch norm after each hidden Linear (``--use_bn_in_head``)."""

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int] = (2048, 2048, 256),
        out_dim: int = 65536,
        *,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        widths = [in_dim, *dims]
        layers: list[nn.Module] = []
        for index, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if index < len(dims) - 1:
                layers += [nn.BatchNorm1d(b)] if use_bn else []
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_trunc_normal_init)
        self.last_layer = parametrizations.weight_norm(nn.Linear(dims[-1], out_dim, bias=False))
        weight_g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            weight_g.fill_(1.0)
        weight_g.requires_grad_(not norm_last_layer)

    def bottleneck(self, features: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck (what the prototypes score)."""
        return F.normalize(self.mlp(features), dim=-1, p=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(features))


def _trunc_normal_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def multi_crop_forward(backbone: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """The backbone's features of every view, concatenated in order, with one backbone call
    per run of consecutive views of one size (``utils.MultiCropWrapper.forward``)."""
    outputs, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        outputs.append(backbone(torch.cat(list(views[start:end]))))
        start = end
    return torch.cat(outputs)


@full_precision
def dino_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    center: torch.Tensor,
    teacher_temp: float,
    *,
    student_temp: float = 0.1,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DINO cross-entropy (module docstring) of the student outputs of every view
    (``student[v]``: N×K, the global views first) against the teacher outputs of the global
    views (``teacher[g]``: N×K, g < len(teacher)), centred by ``center`` (1×K).

    Terms: the teacher's mean entropy H(q) and the mean KL(q ‖ p) = loss − H(q), the two
    collapse signs of the paper's section 5.3 (H → 0: one prototype; KL → 0: uniform)."""
    if len(student) < 2 or not 1 <= len(teacher) <= len(student):
        raise ValueError(
            f"dino_loss: {len(teacher)} teacher and {len(student)} student views; need ≥ 1 "
            "global view and ≥ 2 views, the global views first"
        )
    log_p = torch.stack([F.log_softmax(s / student_temp, dim=-1) for s in student])
    q = torch.stack([F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher])
    # cross[g, v] = mean_n Σ_k −q_g log p_v
    cross = -torch.einsum("gnk,vnk->gv", q, log_p) / q.shape[1]
    same_view = torch.eye(len(teacher), len(student), dtype=torch.bool, device=cross.device)
    loss = cross.masked_fill(same_view, 0).sum() / (cross.numel() - len(teacher))
    if not return_terms:
        return loss
    # Every global view meets the same number of other views, so the pairs' mean H(q) is this.
    entropy = -(q * q.clamp_min(1e-30).log()).sum(dim=-1).mean()
    return loss, {"teacher_entropy": entropy, "kl": loss.detach() - entropy}


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> torch.Tensor:
    """``m·c + (1 − m)·mean`` of the teacher outputs (rows of ``teacher``) of every worker: the
    sum is all-reduced and divided by the global row count (``main_dino.py:406-416``)."""
    batch_center = teacher.to(center.dtype).sum(dim=0, keepdim=True)
    workers = world_size()
    if workers > 1:
        dist.all_reduce(batch_center)
    batch_center = batch_center / (teacher.shape[0] * workers)
    return center * momentum + batch_center * (1 - momentum)


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """τ_t of epoch ``epoch`` (0-based): ``np.linspace(warmup_temp, temp, warmup_epochs)[epoch]``
    during the warm-up, ``temp`` after it (``main_dino.py:374-378``)."""
    if epoch >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1)


@torch.no_grad()
def clip_each_gradient(parameters: Sequence[nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient to norm ≤ ``max_norm`` on its own: ``g ← g·c`` where
    ``c = max_norm / (‖g‖ + 1e-6)`` is below 1 (``utils.clip_gradients``); one fused kernel
    and no host synchronisation."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (norm + 1e-6), max=1.0) for norm in norms]
    torch._foreach_mul_(grads, scales)


class DINO(SSLMethod):
    """Student (backbone + ``DINOHead``) and EMA teacher trained by ``dino_loss`` (module
    docstring). The first views are the global crops; the rest are local crops, seen by the
    student only.

    Options: ``out_dim`` (prototypes, 65536), ``use_bn_in_head``, ``norm_last_layer``,
    ``base_momentum`` (m_0, 0.996), ``center_momentum`` (0.9), ``teacher_temp`` (0.07),
    ``warmup_teacher_temp`` (0.04), ``warmup_teacher_temp_epochs`` (30),
    ``freeze_last_layer_epochs`` (1), ``clip_grad`` (3.0; 0 = off). The card's
    ``global_views`` (2) says how many views come first as global crops. The projector widths
    are the head's hidden widths then its bottleneck (2048-2048-256).
    """

    def __init__(self, card: MethodCard, settings: MethodSettings) -> None:
        super().__init__()
        options = settings.options
        loss = settings.loss
        self.objective = load_attribute(card.objective)
        self.student_temp = float(loss["student_temp"])
        self.base_momentum = float(options["base_momentum"])
        self.center_momentum = float(options["center_momentum"])
        self.temperatures = (
            float(options["warmup_teacher_temp"]),
            float(options["teacher_temp"]),
            int(options["warmup_teacher_temp_epochs"]),
        )
        self.freeze_last_layer_epochs = int(options["freeze_last_layer_epochs"])
        self.clip_grad = float(options["clip_grad"])
        self.global_views = card.global_views
        self.backbone = settings.make_backbone()
        self.projector = self.build_head(
            "dino_head",
            in_dim=self.backbone.feature_dim,
            dims=list(settings.projector),
            out_dim=int(options["out_dim"]),
            use_bn=bool(options["use_bn_in_head"]),
            norm_last_layer=bool(options["norm_last_layer"]),
        )
        # The teacher has no drop-path (main_dino.py:166), starts as the student
        # (main_dino.py:208) and gets no gradient.
        self.teacher_backbone = settings.make_backbone(drop_path_rate=0.0)
        self.teacher_backbone.load_state_dict(self.backbone.state_dict())
        self.teacher_backbone.requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, int(options["out_dim"])))
        self.epoch = 0

    @property
    def teacher_temp(self) -> float:
        return teacher_temperature(self.epoch, *self.temperatures)

    def on_step_start(self, progress: Progress) -> None:
        self.epoch = progress.epoch

    def forward(self, views: list[torch.Tensor], batch: Batch) -> MethodOutput:
        if len(views) < max(self.global_views, 2):
            raise ValueError(f"DINO takes {self.global_views} global views first, got {len(views)}")
        with torch.no_grad():
            teacher = self.teacher_head(
                multi_crop_forward(self.teacher_backbone, views[: self.global_views])
            )
        features = multi_crop_forward(self.backbone, views)
        bottleneck = self.projector.bottleneck(features)
        student = self.projector.last_layer(bottleneck)
        loss, terms = self.objective(
            student.chunk(len(views)),
            teacher.chunk(self.global_views),
            self.center,
            self.teacher_temp,
            student_temp=self.student_temp,
            return_terms=True,
        )
        if self.training:
            self.center.copy_(updated_center(self.center, teacher, self.center_momentum))
        rows = views[0].shape[0]
        return MethodOutput(
            {"loss": loss, **terms},
            embedding=bottleneck[:rows].detach(),
            features=features[:rows].detach(),
        )

    def before_optimizer_step(self, progress: Progress) -> None:
        student = [*self.backbone.parameters(), *self.projector.parameters()]
        if self.clip_grad > 0:
            clip_each_gradient(student, self.clip_grad)
        if progress.epoch < self.freeze_last_layer_epochs:
            for parameter in self.projector.last_layer.parameters():
                parameter.grad = None

    def after_step(self, progress: Progress) -> None:
        momentum = cosine_momentum(progress.step, progress.total_steps, self.base_momentum)
        momentum_update(self.teacher_backbone, self.backbone, momentum)
        momentum_update(self.teacher_head, self.projector, momentum)
