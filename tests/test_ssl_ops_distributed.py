"""Two gloo processes, each holding half the batch, reproduce the full-batch loss and gradient.

One spawned run covers every objective that spans the batch (spawning costs seconds). With
gather_with_grad each rank's gradient of its slice is the sum over the W identical global losses,
so dividing it by W (what DDP's averaging does) must give the single-process gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from dist_utils import spawn_gloo

from sslpipe import ssl_ops
from sslpipe.ssl_ops.distributed import gather_with_grad

WORLD = 2
N, D = 16, 4
Tensors = list[torch.Tensor]


def _pirl(tensors: Tensors, rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    bank = ssl_ops.MemoryBank(40, D, seed=2)
    indices = torch.arange(3, 3 + 2 * N, 2)[rows]
    loss = ssl_ops.pirl_nce_loss(
        *tensors, indices, bank, num_negatives=9, generator=torch.Generator().manual_seed(4)
    )
    return loss, {"bank": bank.rows.clone(), "log_z": bank.log_z.clone()}


def _plain(fn: Callable[..., torch.Tensor]) -> Callable[[Tensors, slice], tuple]:
    return lambda tensors, rows: (fn(*tensors), {})


def _listed(fn: Callable[..., torch.Tensor], **kw) -> Callable[[Tensors, slice], tuple]:
    return lambda tensors, rows: (fn(list(tensors), **kw), {})


def _wmse(tensors: Tensors, rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)  # rank 0's permutation is broadcast
    return ssl_ops.wmse_loss(list(tensors), w_size=8, w_iter=2, generator=generator), {}


CASES: dict[str, tuple[int, Callable[[Tensors, slice], tuple]]] = {
    "vicreg": (2, _plain(ssl_ops.vicreg_loss)),
    "vicreg_exp": (2, _plain(lambda a, b: ssl_ops.vicreg_exp_loss(a, b, temperature=0.5))),
    "vicreg_ctr": (2, _plain(lambda a, b: ssl_ops.vicreg_ctr_loss(a, b, temperature=0.5))),
    "barlow_twins": (2, _plain(ssl_ops.barlow_twins_loss)),
    "nt_xent_3views": (3, _listed(ssl_ops.nt_xent_loss, temperature=0.3)),
    "nt_xent_std": (2, _listed(ssl_ops.nt_xent_loss, standardize=True)),
    "simclr_sq": (2, _listed(ssl_ops.simclr_sq_loss)),
    "dcl": (2, _plain(ssl_ops.dcl_loss)),
    "dclw": (2, _plain(lambda a, b: ssl_ops.dcl_loss(a, b, weighted=True))),
    "dcl_abs": (2, _plain(ssl_ops.dcl_abs_loss)),
    "spectral": (2, _plain(ssl_ops.spectral_contrastive_loss)),
    "wmse": (2, _wmse),
    "sample_criterion": (1, _plain(ssl_ops.sample_contrastive_criterion)),
    "dimension_criterion": (1, _plain(ssl_ops.dimension_contrastive_criterion)),
    "rankme": (1, _plain(ssl_ops.rankme)),
    "uniformity": (1, _plain(ssl_ops.uniformity)),
    "alignment": (2, _plain(ssl_ops.alignment)),
    "std_mean": (1, _plain(lambda z: ssl_ops.embedding_std(z)["std_mean"])),
    "pirl": (2, _pirl),
}


def _inputs(name: str, count: int) -> Tensors:
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return [torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(count)]


def _run(name: str, rows: slice) -> tuple[torch.Tensor, Tensors, dict[str, torch.Tensor]]:
    count, fn = CASES[name]
    tensors = [t[rows].clone().requires_grad_() for t in _inputs(name, count)]
    loss, extra = fn(tensors, rows)
    grads = list(torch.autograd.grad(loss, tensors))
    return loss.detach(), grads, extra


def _worker(rank: int, world: int, out_dir: str) -> None:
    results: dict[str, object] = {}
    rows = slice(rank * N // world, (rank + 1) * N // world)
    for name in CASES:
        results[name] = _run(name, rows)
    try:
        gather_with_grad(torch.zeros(3 + rank, 2))
        results["unequal"] = "no error"
    except ValueError as error:
        results["unequal"] = str(error)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp_path = tmp_path_factory.mktemp("gloo")
    spawn_gloo(_worker, WORLD, tmp_path, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_match_full_batch(distributed_results: list[dict], name: str) -> None:
    full_loss, full_grads, full_extra = _run(name, slice(0, N))
    for rank, results in enumerate(distributed_results):
        loss, grads, extra = results[name]
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        torch.testing.assert_close(loss, full_loss, rtol=0, atol=1e-6 * max(1, abs(full_loss)))
        for grad, full_grad in zip(grads, full_grads, strict=True):
            torch.testing.assert_close(grad / WORLD, full_grad[rows], rtol=1e-6, atol=1e-9)
        for key, value in full_extra.items():
            torch.testing.assert_close(extra[key], value, rtol=0, atol=1e-6)


def test_unequal_local_batches_raise_on_every_rank(distributed_results: list[dict]) -> None:
    for results in distributed_results:
        assert "same local batch size" in results["unequal"]
        assert "[3, 4]" in results["unequal"]
