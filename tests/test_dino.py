"""DINO against a line-by-line port of the official code (facebookresearch/dino @ 7c446df), in
float64: the head, the loss and its centre, the schedules, per-parameter clipping and the frozen
last layer; and an exact stop/resume of all its state. The centre spanning two gloo workers is a
case of ``test_ssl_ops_distributed.py`` (one spawn for every objective)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.ssl_ops.byol import cosine_momentum
from sslpipe.ssl_ops.catalog import get_method
from sslpipe.ssl_ops.dino import (
    DINOHead,
    clip_each_gradient,
    dino_loss,
    teacher_temperature,
    updated_center,
)
from sslpipe.ssl_ops.heads import HeadSpec
from sslpipe.ssl_ops.method import Batch, MethodSettings, Progress, build_method

# ---- the official code, ported line by line (only ``.cuda()`` and the prints removed) ----


def official_cosine_scheduler(
    base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0
):  # utils.py:187-199
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)

    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters))
    )

    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


class OfficialDINOHead(nn.Module):  # vision_transformer.py:257-291
    def __init__(
        self, in_dim, out_dim, use_bn=False, norm_last_layer=True, nlayers=3, hidden_dim=2048,
        bottleneck_dim=256,
    ):  # fmt: skip
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's old weight_norm
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x):
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2)
        x = self.last_layer(x)
        return x


class OfficialDINOLoss(nn.Module):  # main_dino.py:363-416
    def __init__(
        self, out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs,
        nepochs, student_temp=0.1, center_momentum=0.9,
    ):  # fmt: skip
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = np.concatenate(
            (
                np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
                np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
            )
        )

    def forward(self, student_output, teacher_output, epoch):
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)

        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)

        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        world = 1
        if dist.is_initialized():  # the official code always runs under torch.distributed
            dist.all_reduce(batch_center)
            world = dist.get_world_size()
        batch_center = batch_center / (len(teacher_output) * world)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def official_clip_gradients(model, clip):  # utils.py:132-141
    norms = []
    for _name, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def official_cancel_gradients_last_layer(epoch, model, freeze_last_layer):  # utils.py:144-149
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


# ---- the tests ----

IN, OUT, N, CROPS = 12, 40, 6, 5


def _heads(use_bn: bool = False) -> tuple[DINOHead, OfficialDINOHead]:
    ours = DINOHead(IN, (16, 16, 8), OUT, use_bn=use_bn).double()
    official = OfficialDINOHead(IN, OUT, use_bn, hidden_dim=16, bottleneck_dim=8).double()
    state = {
        k: v for k, v in ours.state_dict().items() if not k.startswith("last_layer.")
    }  # the MLP has the same names; the prototype layer's norm g and direction v move
    weight = ours.last_layer.parametrizations.weight
    state |= {"last_layer.weight_g": weight.original0, "last_layer.weight_v": weight.original1}
    official.load_state_dict(state)
    return ours, official


@pytest.mark.parametrize("use_bn", [False, True])
def test_head_matches_the_official_head(use_bn: bool) -> None:
    ours, official = _heads(use_bn)
    x = torch.randn(N, IN, dtype=torch.float64)
    torch.testing.assert_close(ours(x), official(x), rtol=1e-12, atol=1e-12)
    # The norm g stays 1 and out of training (norm_last_layer); v trains.
    assert [n for n, p in ours.named_parameters() if not p.requires_grad] == [
        "last_layer.parametrizations.weight.original0"
    ]
    assert torch.equal(ours.last_layer.parametrizations.weight.original0, torch.ones(OUT, 1))


def test_loss_and_centre_match_the_official_over_epochs() -> None:
    g = torch.Generator().manual_seed(0)
    official = OfficialDINOLoss(OUT, CROPS, 0.04, 0.07, 3, 5).double()
    center = torch.zeros(1, OUT, dtype=torch.float64)
    for epoch in range(5):
        student = torch.randn(CROPS * N, OUT, generator=g, dtype=torch.float64) * 3
        teacher = torch.randn(2 * N, OUT, generator=g, dtype=torch.float64) * 3
        student.requires_grad_()
        expected = official(student, teacher, epoch)
        (expected_grad,) = torch.autograd.grad(expected, student)
        temperature = teacher_temperature(epoch, 0.04, 0.07, 3)
        assert temperature == pytest.approx(official.teacher_temp_schedule[epoch], abs=1e-15)
        loss = dino_loss(student.chunk(CROPS), teacher.chunk(2), center, temperature)
        (grad,) = torch.autograd.grad(loss, student)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)
        _, terms = dino_loss(student.chunk(CROPS), teacher.chunk(2), center, temperature,
                             return_terms=True)  # fmt: skip
        q = F.softmax((teacher - center) / temperature, dim=-1)
        torch.testing.assert_close(terms["teacher_entropy"], -(q * q.log()).sum(-1).mean())
        center = updated_center(center, teacher, 0.9)
        torch.testing.assert_close(center, official.center, rtol=1e-12, atol=1e-14)


def test_schedules_match_the_official() -> None:
    epochs, per_epoch = 7, 9
    momentum = official_cosine_scheduler(0.996, 1, epochs, per_epoch)
    total = epochs * per_epoch
    ours = [cosine_momentum(step, total, 0.996) for step in range(total)]
    np.testing.assert_allclose(ours, momentum, rtol=0, atol=1e-15)
    temps = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07))
    ours_t = [teacher_temperature(e, 0.04, 0.07, 30) for e in range(100)]
    np.testing.assert_allclose(ours_t, temps, rtol=0, atol=1e-15)
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07  # no warm-up


def test_clipping_and_frozen_last_layer_match_the_official() -> None:
    ours, official = _heads()
    x = torch.randn(N, IN, dtype=torch.float64) * 50
    for module in (ours, official):
        module(x).pow(2).sum().backward()
    official_clip_gradients(official, 0.3)
    clip_each_gradient(list(ours.parameters()), 0.3)
    for (name, p), q in zip(ours.mlp.named_parameters(), official.mlp.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-15, msg=name)
    v = ours.last_layer.parametrizations.weight.original1
    torch.testing.assert_close(v.grad, official.last_layer.weight_v.grad, rtol=1e-12, atol=1e-15)
    assert max(p.grad.norm() for p in ours.parameters() if p.grad is not None) <= 0.3 + 1e-9
    official_cancel_gradients_last_layer(0, official, 1)
    assert official.last_layer.weight_v.grad is None


# A small student: the CPU's small CNN (the state under test is the method's, not the
# backbone's) on 8-px global and 4-px local crops.
def _settings(**options) -> MethodSettings:
    card = get_method("dino")
    return MethodSettings(
        backbone="small_cnn",
        projector=(32, 32, 16),
        options={**card.options, "out_dim": 64, **options},
        loss=dict(card.loss),
    )


def _views(generator: torch.Generator) -> list[torch.Tensor]:
    sizes = [8, 8, 4, 4]
    return [torch.randn(4, 3, s, s, generator=generator) for s in sizes]


def _train(method, optimizer, steps: range, total: int) -> None:
    for step in steps:
        progress = Progress(step, step, 1, total)  # one step per epoch
        method.on_step_start(progress)
        output = method(_views(torch.Generator().manual_seed(step)), Batch(torch.zeros(4)))
        optimizer.zero_grad()
        output.losses["loss"].backward()
        method.before_optimizer_step(progress)
        optimizer.step()
        method.after_step(progress)


def test_stop_and_resume_is_exact() -> None:
    """Three steps (epochs 0-2, the teacher's τ warming up) in one go equal one step, a
    state_dict round trip into a fresh method, and two more: teacher, centre and the
    schedules' positions all come back."""
    card, total = get_method("dino"), 3

    def fresh():
        method = build_method(card, _settings(warmup_teacher_temp_epochs=2))
        return method, torch.optim.AdamW(p for p in method.parameters() if p.requires_grad)

    straight, straight_opt = fresh()
    prototypes = straight.projector.last_layer.parametrizations.weight.original1.clone()
    _train(straight, straight_opt, range(total), total)

    first, first_opt = fresh()
    _train(first, first_opt, range(1), total)
    assert not torch.equal(first.center, torch.zeros_like(first.center))
    # Epoch 0: the prototype layer is frozen (its gradient dropped, so AdamW skips it).
    assert torch.equal(first.projector.last_layer.parametrizations.weight.original1, prototypes)
    resumed, resumed_opt = fresh()
    resumed.load_state_dict(first.state_dict())
    resumed_opt.load_state_dict(first_opt.state_dict())
    _train(resumed, resumed_opt, range(1, total), total)

    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    last_layer = straight.projector.last_layer.parametrizations.weight.original1
    assert not torch.equal(last_layer, prototypes)
    teacher, student = straight.teacher_head.mlp[0].weight, straight.projector.mlp[0].weight
    assert not torch.equal(teacher, student)  # the EMA lags the student
    # model.json's head spec (JSON) rebuilds the head for load_encoder and export.
    spec = json.loads(json.dumps(vars(straight.head_spec)))
    head = HeadSpec(spec["kind"], spec["kwargs"]).build()
    head.load_state_dict(straight.projector.state_dict())
    features = torch.randn(3, straight.backbone.feature_dim)
    torch.testing.assert_close(head(features), straight.projector(features))


def _pretrain(**fields) -> PretrainConfig:
    return PretrainConfig.model_validate(
        {"name": "pretrain", "type": "pretrain", "data": "ingest", "method": "dino", **fields}
    )


def test_views_must_fit_the_method_and_the_backbone() -> None:
    config = _pretrain(backbone="vit_mini_patch4", views="dino_cifar")
    assert [r.size for r in config.recipes()] == [32, 32] + [16] * 10
    assert config.recipes()[1].solarize_p == 0.2 and config.recipes()[0].solarize_p == 0
    assert _pretrain(backbone="vit_small_patch16").card().global_views == 2
    with pytest.raises(ValidationError, match=r"global crops first, of one size"):
        _pretrain(views=[{"preset": "dino_cifar", "index": 2}, {"preset": "dino_cifar"}])
    with pytest.raises(ValidationError, match=r"vit_small_patch16 needs multiples of its 16-px"):
        _pretrain(backbone="vit_small_patch16", views="dino", view_overrides={"size": 200})
    with pytest.raises(ValidationError, match=r"of one size"):
        _pretrain(views="dino_cifar", view_overrides={"view": 1, "size": 24})
