"""One worker or two, the same global batch gives the same training: DDP + the ssl_ops gather
+ global batch norm, on CPU with gloo (real torch.distributed, two processes). BYOL adds a
momentum target with batch norm and no gradients, which DDP must not wait for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.pipelines.training.step import build_training_method, train_step
from sslpipe.ssl_ops import Batch, Progress
from sslpipe.ssl_ops.optim import HyperparameterScheduler, build_optimizer

GLOBAL_BATCH, STEPS = 16, 3
CONFIG = {
    "name": "pretrain",
    "type": "pretrain",
    "data": "ingest",
    "backbone": "small_cnn",
    "projector": [32, 32],
    "global_batch_size": GLOBAL_BATCH,
    "optimizer": "sgd",
    "base_lr": 0.5,
    "weight_decay": 1e-4,
}


def _batches() -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=generator) for _ in range(2)]
        for _ in range(STEPS)
    ]


def _losses(rank: int, world: int, method_name: str) -> list[float]:
    config = PretrainConfig.model_validate({**CONFIG, "method": method_name})
    method = build_training_method(config, 0, world, torch.device("cpu"))
    model = DistributedDataParallel(method, forward_sync_buffers=False) if world > 1 else method
    optimizer = build_optimizer("sgd", method, lr=config.learning_rate(), weight_decay=1e-4)
    scheduler = HyperparameterScheduler(optimizer, [{} for _ in optimizer.param_groups])
    local = GLOBAL_BATCH // world
    labels = Batch(torch.zeros(local, dtype=torch.long))
    losses = []
    for step, views in enumerate(_batches()):
        mine = [v[rank * local : (rank + 1) * local] for v in views]
        progress = Progress.at(step, STEPS, STEPS)
        output = train_step(model, method, mine, labels, optimizer, scheduler, config, progress)
        losses.append(output.losses["loss"].item())
    return losses


def _worker(rank: int, world: int, store: str, out: str, method_name: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_losses(rank, world, method_name), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method_name", ["vicreg", "byol"])
def test_two_workers_match_one_worker_on_the_same_global_batch(
    tmp_path: Path, method_name: str
) -> None:
    single = _losses(0, 1, method_name)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = (2, str(tmp_path / "store"), str(tmp_path), method_name)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    # A per-sample objective (BYOL's) gives each rank the mean over its own half; DDP averages
    # the gradients, i.e. trains the mean over ranks.
    ranks = torch.tensor([torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)])
    torch.testing.assert_close(ranks.mean(0).tolist(), single, rtol=1e-4, atol=1e-5)
    assert single[0] != single[-1], "the steps must change the model"
