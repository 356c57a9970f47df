"""One worker or two, the same global batch gives the same training: DDP + the ssl_ops gather
+ global batch norm, on CPU with gloo (real torch.distributed, two processes)."""

from __future__ import annotations

import os
from pathlib import Path

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


def _losses(rank: int, world: int) -> list[float]:
    config = PretrainConfig.model_validate(CONFIG)
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


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_losses(rank, world), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_workers_match_one_worker_on_the_same_global_batch(tmp_path: Path) -> None:
    single = _losses(0, 1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        distributed = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(distributed, single, rtol=1e-4, atol=1e-5)
    assert single[0] != single[-1], "the steps must change the model"
