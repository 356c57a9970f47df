"""Every registered method trains through the pretrain step: finite loss, parameters move."""

from __future__ import annotations

import pytest
import torch

from sslpipe.pipelines.pretrain_worker import (
    Monitor,
    StepResult,
    TrainingStopped,
    build_bank,
    build_encoder,
    learning_rate,
    train_step,
)
from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.ssl_ops import METHODS
from sslpipe.ssl_ops.optim import build_optimizer


def _views(config: PretrainConfig, batch: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Random inputs shaped as the method's loader yields them (16 px images, 8 px patches)."""
    views = []
    for recipe in config.recipes():
        if recipe.jigsaw is None:
            views.append(torch.randn(batch, 3, 16, 16, generator=generator))
            continue
        cells = recipe.jigsaw.grid**2
        views.append(torch.randn(batch, cells, 3, 8, 8, generator=generator))
        views.append(
            torch.stack([torch.randperm(cells, generator=generator) for _ in range(batch)])
        )
    return views


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_step_of_every_method(method: str) -> None:
    config = PretrainConfig.model_validate(
        {
            "name": "pretrain",
            "type": "pretrain",
            "data": "ingest",
            "method": method,
            "backbone": "small_cnn",
            "projector": [96, 64],
            "global_batch_size": 128,
        }
    )
    settings = config.resolved()
    encoder = build_encoder(config, 1, torch.device("cpu"))
    optimizer = build_optimizer(
        settings["optimizer"], encoder, lr=learning_rate(config), weight_decay=1e-6
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = [p.detach().clone() for p in encoder.parameters()]
    generator = torch.Generator().manual_seed(0)
    views = _views(config, 128, generator)
    bank = build_bank(config, 1000, torch.device("cpu"))
    loss_inputs = None
    if bank is not None:
        rows = bank.rows.clone()
        loss_inputs = {"bank": bank, "indices": torch.randperm(1000, generator=generator)[:128]}
    result = train_step(encoder, views, config, optimizer, scheduler, 1, loss_inputs)
    assert torch.isfinite(torch.tensor(result.values["loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True))
    if bank is not None:
        updated = (bank.rows != rows).any(dim=1)
        assert updated.sum() == 128 and updated[loss_inputs["indices"]].all()


def _vicreg_config(**overrides) -> PretrainConfig:
    return PretrainConfig.model_validate(
        {
            "name": "pretrain",
            "type": "pretrain",
            "data": "ingest",
            "backbone": "small_cnn",
            "projector": [32, 32],
            "global_batch_size": 8,
            **overrides,
        }
    )


def test_nan_guard_names_the_step_and_keeps_the_model() -> None:
    config = _vicreg_config()
    encoder = build_encoder(config, 1, torch.device("cpu"))
    optimizer = build_optimizer("sgd", encoder, lr=0.1, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = [p.detach().clone() for p in encoder.parameters()]
    views = [torch.randn(8, 3, 16, 16), torch.full((8, 3, 16, 16), float("nan"))]
    with pytest.raises(TrainingStopped, match=r"step 7: .*NaN"):
        train_step(encoder, views, config, optimizer, scheduler, step=7)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True))


def test_collapse_guard_stops_after_patience_checks() -> None:
    config = _vicreg_config(monitor_every_steps=1, collapse_patience=3)
    monitor = Monitor.create(config, feature_dim=4, num_classes=2, device="cpu")
    collapsed = StepResult({"loss": 1.0}, [torch.ones(8, 16)], torch.randn(8, 4))
    labels = torch.zeros(8, dtype=torch.long)
    monitor.observe(collapsed, labels, step=1)
    monitor.observe(collapsed, labels, step=2)
    with pytest.raises(TrainingStopped, match="step 3: representation collapse"):
        monitor.observe(collapsed, labels, step=3)
    healthy = StepResult({"loss": 1.0}, [torch.randn(8, 16)], torch.randn(8, 4))
    record = monitor.observe(healthy, labels, step=4)
    assert record["normalised_std"] > 0.5 and "rankme" in record
    assert "online_probe_top1" in record
