"""Every method in the catalog trains through the pretrain step; the loop's parts: batches on
the device, the data-wait clock, the non-finite guard's bookkeeping, the collapse guard."""

from __future__ import annotations

import time

import pytest
import torch

from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.pipelines.training.batches import DataWaitClock, TimedLoader, prepare_batch
from sslpipe.pipelines.training.monitor import Monitor
from sslpipe.pipelines.training.step import build_scheduler, build_training_method, train_step
from sslpipe.pipelines.training.worker import Window
from sslpipe.ssl_ops import Batch, MethodOutput, Progress
from sslpipe.ssl_ops.catalog import METHODS
from sslpipe.ssl_ops.optim import build_optimizer

BATCH, NUM_SAMPLES = 64, 1000


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


def _config(**fields) -> PretrainConfig:
    return PretrainConfig.model_validate(
        {
            "name": "pretrain",
            "type": "pretrain",
            "data": "ingest",
            "backbone": "small_cnn",
            "projector": [96, 64],
            "global_batch_size": BATCH,
            **fields,
        }
    )


def _method_config(method: str) -> PretrainConfig:
    fields: dict = {"method": method}
    if method == "wmse":
        fields["loss"] = {"w_size": 128}
        fields["global_batch_size"] = 128
    if method == "pirl":
        fields |= {"projector": [64], "loss": {"num_negatives": 256}}
    if method == "dino":  # 2 global crops and 1 local crop, 256 prototypes
        crops = [{"preset": "dino_cifar", "index": i} for i in range(3)]
        fields |= {"views": crops, "method_options": {"out_dim": 256}}
    if method == "mae":  # a ViT, a 1-block decoder and a small batch
        options = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
        fields |= {"backbone": "vit_mini_patch4", "views": "mae_cifar", "method_options": options,
                   "global_batch_size": 16}  # fmt: skip
    return _config(**fields)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_step_of_every_method(method: str) -> None:
    config = _method_config(method)
    model = build_training_method(config, NUM_SAMPLES, 1, torch.device("cpu"))
    optimizer = build_optimizer(
        config.optimizer_name(), model, lr=config.learning_rate(), weight_decay=1e-6
    )
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    batch_size = config.global_batch_size
    indices = torch.randperm(NUM_SAMPLES, generator=generator)[:batch_size]
    batch = Batch(torch.zeros(batch_size, dtype=torch.long), indices)
    output = train_step(
        model,
        model,
        _views(config, batch_size, generator),
        batch,
        optimizer,
        scheduler,
        config,
        Progress.at(0, 10, 10),
    )
    assert torch.isfinite(output.losses["loss"])
    assert set(output.losses) > {"loss"} or method == "mae", "the named terms are logged"
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    if config.card().needs_indices:
        rows = (before["bank.rows"] != after["bank.rows"]).any(dim=1)
        assert rows.sum() == batch_size and rows[indices].all()


def test_separate_branches_share_no_weights_and_may_differ_in_architecture() -> None:
    config = _config(separate_branches=True, branch_backbone="resnet18")
    model = build_training_method(config, NUM_SAMPLES, 1, torch.device("cpu"))
    assert model.branch is not None
    assert model.backbone.feature_dim == 256 and model.branch["backbone"].feature_dim == 512
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    output = model(views, Batch(torch.zeros(8, dtype=torch.long)))
    output.losses["loss"].backward()
    assert model.backbone[0].weight.grad is not None
    assert model.branch["backbone"].conv1.weight.grad is not None


def test_simclr_encodes_views_of_one_size_in_one_batch() -> None:
    """SimCLR's backbone sees its views concatenated (batch norm over all of them, as the
    official model.py): one call per crop size for multi-crop, the loss over all views."""
    config = _config(method="simclr", views="multicrop")
    model = build_training_method(config, NUM_SAMPLES, 1, torch.device("cpu"))
    calls: list[tuple[int, ...]] = []
    model.backbone.register_forward_hook(lambda _m, args, _o: calls.append(tuple(args[0].shape)))
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)] + [
        torch.randn(8, 3, 16, 16) for _ in range(6)
    ]
    output = model(views, Batch(torch.zeros(8, dtype=torch.long)))
    assert calls == [(16, 3, 32, 32), (48, 3, 16, 16)]
    assert torch.isfinite(output.losses["loss"])
    model.eval()  # batch statistics aside, the features are each view's own
    together = model.view_features(views)
    assert all(
        torch.allclose(f, model.backbone(v), atol=1e-5)
        for f, v in zip(together, views, strict=True)
    )


@pytest.mark.parametrize(
    ("shapes", "channels_last"),
    [
        ([(4, 3, 8, 8), (4, 3, 8, 8)], [True, True]),  # two views
        ([(4, 3, 8, 8), (4, 3, 8, 8), (4, 3, 4, 4), (4, 3, 4, 4)], [True] * 4),  # multicrop
        ([(4, 3, 8, 8), (4, 9, 3, 4, 4), (4, 9)], [True, False, False]),  # PIRL's jigsaw
    ],
)
def test_prepare_batch_keeps_non_image_tensors_as_they_are(shapes, channels_last) -> None:
    views = [
        torch.randint(0, 9, shape) if len(shape) == 2 else torch.randn(shape) for shape in shapes
    ]
    labels, indices = torch.arange(4), torch.arange(4, 8)
    # On the CPU prepare_batch only moves; the layout rule is what it would apply on CUDA.
    moved, batch = prepare_batch((views, labels, indices), torch.device("cpu"))
    assert [tuple(v.shape) for v in moved] == shapes
    assert torch.equal(batch.indices, indices) and torch.equal(batch.labels, labels)
    wanted = [v.dim() == 4 and v.is_floating_point() for v in views]
    assert wanted == channels_last


class _SlowLoader:
    """Two epochs' worth of batches, each taking ``seconds`` to hand over."""

    def __init__(self, batches: int, seconds: float) -> None:
        self.batches, self.seconds = batches, seconds

    def __iter__(self):
        for _ in range(self.batches):
            time.sleep(self.seconds)
            yield [torch.zeros(2, 3, 4, 4)], torch.zeros(2, dtype=torch.long)


def test_data_wait_counts_the_loader_across_epochs_and_not_the_step() -> None:
    cpu = torch.device("cpu")
    clock = DataWaitClock(cpu)
    loader, step_seconds = _SlowLoader(batches=2, seconds=0.02), 0.15
    steps = 0
    for _ in range(2):  # epochs: the wait for an epoch's first batch counts too
        for views, batch in TimedLoader(loader, cpu, clock):
            assert views[0].shape == (2, 3, 4, 4) and batch.labels.shape == (2,)
            time.sleep(step_seconds)
            steps += 1
    waited = clock.take()
    assert steps == 4
    assert 4 * loader.seconds <= waited < 4 * step_seconds
    assert clock.take() == 0.0


def test_window_names_the_first_non_finite_step() -> None:
    window = Window(torch.device("cpu"))
    good = MethodOutput({"loss": torch.tensor(1.0)}, torch.randn(4, 8), torch.randn(4, 2))
    bad = MethodOutput({"loss": torch.tensor(float("nan"))}, torch.randn(4, 8), torch.randn(4, 2))
    window.add(good, 5)
    assert window.first_bad is not None and torch.isinf(window.first_bad)
    window.add(bad, 6)
    window.add(bad, 7)
    assert float(window.first_bad) == 6
    inf_embedding = MethodOutput(
        {"loss": torch.tensor(1.0)}, torch.full((4, 8), float("inf")), torch.randn(4, 2)
    )
    window.reset()
    window.add(inf_embedding, 9)
    assert float(window.first_bad) == 9


def test_collapse_guard_stops_after_patience_checks() -> None:
    config = _config(monitor_every_steps=2, collapse_patience=2)
    monitor = Monitor.create(config, feature_dim=4, num_classes=2, device=torch.device("cpu"))
    assert monitor.collapse(0.01, step=1) is None  # not a check step
    assert monitor.collapse(0.01, step=2) is None
    assert monitor.collapse(0.9, step=4) is None  # healthy: the count starts over
    assert monitor.collapse(0.01, step=6) is None
    reason = monitor.collapse(0.01, step=8)
    assert reason is not None and reason.startswith("step 8: representation collapse")


def test_monitor_statistics_spread_and_rankme() -> None:
    config = _config(monitor_every_steps=1)
    monitor = Monitor.create(config, feature_dim=4, num_classes=2, device=torch.device("cpu"))
    collapsed = MethodOutput({"loss": torch.tensor(1.0)}, torch.ones(8, 16), torch.randn(8, 4))
    healthy = MethodOutput({"loss": torch.tensor(1.0)}, torch.randn(8, 16), torch.randn(8, 4))
    labels = torch.tensor([0, 1] * 4)
    monitor.observe(healthy, labels)
    assert float(monitor.statistics(collapsed, 1)["normalised_std"]) < 1e-3
    stats = monitor.statistics(healthy, 2)
    assert float(stats["normalised_std"]) > 0.5 and float(stats["rankme"]) > 1
    assert "online_probe_top1" in stats


@pytest.mark.parametrize("method", ["byol", "pirl"])
def test_method_state_survives_a_checkpoint_exactly(method: str, tmp_path) -> None:
    """Target network (BYOL) and memory bank (PIRL) go through ``TrainState`` save/load: the
    resumed method continues exactly as the original does."""
    from sslpipe.pipelines.models.weights import ModelDescription
    from sslpipe.pipelines.training.checkpoint import TrainState

    config = _method_config(method)
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(3):
        indices = torch.randperm(NUM_SAMPLES, generator=generator)[: config.global_batch_size]
        labels = torch.zeros(config.global_batch_size, dtype=torch.long)
        batches.append(
            (_views(config, config.global_batch_size, generator), Batch(labels, indices))
        )

    def build() -> tuple:
        model = build_training_method(config, NUM_SAMPLES, 1, torch.device("cpu"))
        optimizer = build_optimizer(config.optimizer_name(), model, lr=0.05, weight_decay=1e-6)
        scheduler = build_scheduler(config, optimizer, steps_per_epoch=3)
        description = ModelDescription(
            method=method, backbone="small_cnn", backbone_options={}, feature_dim=256,
            head=vars(model.head_spec), input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3,
            epochs=1, data_fingerprint="x",
        )  # fmt: skip
        return model, optimizer, TrainState(model, optimizer, scheduler, description)

    def step(state: TrainState, number: int) -> torch.Tensor:
        views, batch = batches[number - 1]
        output = train_step(
            state.method, state.method, views, batch, state.optimizer, state.scheduler,
            config, Progress.at(number - 1, 3, 3),
        )  # fmt: skip
        state.step = number
        return output.losses["loss"].detach()

    original, _, state = build()
    step(state, 1)
    torch.manual_seed(7)
    state.save(tmp_path, final=False)
    expected = step(state, 2)

    resumed, _, restored = build()
    restored.load(tmp_path)
    assert restored.step == 1
    assert torch.equal(step(restored, 2), expected)
    for name, value in original.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    if method == "byol":
        online = original.backbone.state_dict()
        target = original.target_backbone.state_dict()
        assert any(not torch.equal(online[k], target[k]) for k in online if k.endswith("weight"))


def test_simsiam_predictor_keeps_its_lr_and_every_parameter_decays() -> None:
    """``--fix-pred-lr`` and weight decay on every parameter, as main_simsiam.py."""
    from sslpipe.pipelines.training.step import build_training_optimizer

    config = _config(method="simsiam", projector=[64, 64, 64], epochs=2)
    model = build_training_method(config, NUM_SAMPLES, 1, torch.device("cpu"))
    optimizer = build_training_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=5)
    predictor = {id(p) for p in model.predictor.parameters()}
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        in_predictor = {id(p) in predictor for p in group["params"]}
        assert len(in_predictor) == 1 and group["fixed_lr"] == in_predictor.pop()
        assert group["weight_decay"] == config.weight_decay_value()
        assert (lr == config.learning_rate()) == group["fixed_lr"]
