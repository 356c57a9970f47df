"""The method protocol without Ray: the order of the hooks around the optimizer step, heads of
any kind rebuilt from what ``model.json`` records, and older ``model.json`` files."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sslpipe.pipelines.models.weights import ModelDescription, load_encoder
from sslpipe.pipelines.run.outputs import ENCODER_WEIGHTS
from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.pipelines.training.step import (
    build_scheduler,
    build_training_optimizer,
    method_settings,
    train_step,
)
from sslpipe.ssl_ops import (
    Batch,
    HeadSpec,
    JointEmbedding,
    MethodOutput,
    Progress,
    Tokens,
    build_backbone,
    register_head,
)
from sslpipe.ssl_ops.catalog import METHODS

CONFIG = PretrainConfig.model_validate(
    {
        "name": "pretrain",
        "type": "pretrain",
        "data": "ingest",
        "backbone": "small_cnn",
        "projector": [16, 8],
        "global_batch_size": 8,
        "optimizer": "sgd",
        "base_lr": 0.1,
        "warmup_epochs": 0,
        "epochs": 2,
    }
)


class Recording(JointEmbedding):
    """VICReg that records what each hook sees."""

    def __init__(self) -> None:
        super().__init__(METHODS["vicreg"], method_settings(CONFIG, 0))
        self.events: list[tuple[str, int, int, bool, float]] = []

    def _record(self, hook: str, progress: Progress) -> None:
        weight = self.projector[0].weight
        self.events.append(
            (hook, progress.step, progress.epoch, weight.grad is not None, weight[0, 0].item())
        )

    def on_step_start(self, progress: Progress) -> None:
        self._record("start", progress)

    def before_optimizer_step(self, progress: Progress) -> None:
        self._record("before", progress)

    def after_step(self, progress: Progress) -> None:
        self._record("after", progress)


def test_hooks_see_the_progress_around_the_optimizer_step() -> None:
    torch.manual_seed(0)
    method = Recording()
    optimizer = build_training_optimizer(CONFIG, method)
    scheduler = build_scheduler(CONFIG, optimizer, steps_per_epoch=2)
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    for step in range(3):
        progress = Progress.at(step, 2, 4)
        output = train_step(
            method, method, views, Batch(torch.zeros(8, dtype=torch.long)), optimizer,
            scheduler, CONFIG, progress,
        )  # fmt: skip
        assert isinstance(output, MethodOutput)
    hooks = [(hook, step, epoch, has_grad) for hook, step, epoch, has_grad, _ in method.events]
    assert hooks[:3] == [("start", 0, 0, False), ("before", 0, 0, True), ("after", 0, 0, True)]
    assert hooks[6:] == [("start", 2, 1, True), ("before", 2, 1, True), ("after", 2, 1, True)]
    values = [value for *_, value in method.events]
    assert values[0] == values[1] != values[2]  # the optimizer stepped between the two
    assert Progress.at(3, 2, 4).epoch_float == 1.5


@register_head("test_token_mean")
class TokenMean(nn.Module):
    """A head over patch tokens: their mean, scaled."""

    takes_tokens = True

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, tokens: Tokens) -> torch.Tensor:
        return self.scale * tokens.patches.mean(dim=1)


def test_a_head_of_another_kind_round_trips_through_model_json(tmp_path: Path) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("vit_mini_patch4", image_size=32).eval()
    spec = HeadSpec("test_token_mean", {"scale": 3.0})
    head = spec.build()
    with torch.no_grad():
        head.scale.fill_(5.0)  # trained away from its initial value
    torch.save(nn.Sequential(backbone, head).state_dict(), tmp_path / ENCODER_WEIGHTS)
    ModelDescription(
        method="vicreg", backbone="vit_mini_patch4", backbone_options={"image_size": 32},
        feature_dim=128, head={"kind": spec.kind, "kwargs": dict(spec.kwargs)}, input_size=32,
        mean=(0.5,) * 3, std=(0.5,) * 3, epochs=1, data_fingerprint="x",
    ).write(tmp_path)  # fmt: skip
    encoder = load_encoder(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = 5.0 * backbone.forward_tokens(images).patches.mean(dim=1)
        torch.testing.assert_close(encoder(images), expected)


def test_an_older_model_json_still_loads(tmp_path: Path) -> None:
    old = {
        "method": "vicreg", "backbone": "small_cnn", "cifar_stem": False, "feature_dim": 256,
        "projector": [16, 8], "projector_kwargs": {"output_norm": True}, "input_size": 16,
        "mean": [0.5] * 3, "std": [0.5] * 3, "epochs": 1, "data_fingerprint": "x",
    }  # fmt: skip
    description = ModelDescription.model_validate(old)
    assert description.backbone_options == {"cifar_stem": False}
    assert description.head is not None and description.head.kind == "mlp"
    assert description.head.kwargs == {"in_dim": 256, "dims": [16, 8], "output_norm": True}
    head = description.build_head()
    assert isinstance(head[-1], nn.BatchNorm1d) and head[-1].num_features == 8
