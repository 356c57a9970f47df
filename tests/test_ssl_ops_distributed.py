"""Two gloo processes, each holding half the batch, reproduce the full-batch loss and gradient.

One spawned run covers every objective (spawning costs seconds) and GlobalBatchNorm. With
gather_with_grad each rank's gradient of its slice is the sum over the W identical global losses,
so dividing it by W (what DDP's averaging does) must give the single-process gradient. The
per-sample objectives (BYOL, SimSiam, PIRL's NCE) gather nothing: each rank's value is its own
mean, the ranks' mean is the full-batch loss, and the gradient convention is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_utils import spawn_gloo

from sslpipe import ssl_ops
from sslpipe.ssl_ops.byol import byol_loss
from sslpipe.ssl_ops.checks import StrictCheckError, strict_checks
from sslpipe.ssl_ops.dino import dino_loss, updated_center
from sslpipe.ssl_ops.distributed import gather_with_grad
from sslpipe.ssl_ops.simsiam import simsiam_loss
from sslpipe.ssl_ops.sync_batchnorm import GlobalBatchNorm

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


def _dino(tensors: Tensors, rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Three student views, two teacher views: a per-sample loss, and the centre of the
    teacher outputs of every rank (the official ``all_reduce`` in ``update_center``)."""
    center = torch.linspace(-1, 1, D, dtype=torch.float64).unsqueeze(0)
    loss = dino_loss(tensors[:3], tensors[3:], center, 0.5, student_temp=0.3)
    return loss, {"center": updated_center(center, torch.cat(tensors[3:]), 0.9)}


CASES: dict[str, tuple[int, Callable[[Tensors, slice], tuple]]] = {
    "vicreg": (2, _plain(ssl_ops.vicreg_loss)),
    "vicreg_bf16": (2, _plain(lambda a, b: ssl_ops.vicreg_loss(a, b, loss_precision="bf16"))),
    "vicreg_exp": (2, _plain(lambda a, b: ssl_ops.vicreg_exp_loss(a, b, temperature=0.5))),
    "vicreg_ctr": (2, _plain(lambda a, b: ssl_ops.vicreg_ctr_loss(a, b, temperature=0.5))),
    "barlow_twins": (2, _plain(ssl_ops.barlow_twins_loss)),
    "barlow_official": (
        2,
        _plain(lambda a, b: ssl_ops.barlow_twins_loss(a, b, scaling="official")),
    ),
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
    "byol": (4, _plain(byol_loss)),
    "simsiam": (4, _plain(simsiam_loss)),
    "dino": (5, _dino),
}
PER_SAMPLE = {"pirl", "byol", "simsiam", "dino"}  # each rank's loss is its own mean
# The ranks' gradient divided by W (DDP) is this factor times the single-process one.
GRADIENT_FACTOR = {"barlow_official": 1 / WORLD}


def _inputs(name: str, count: int) -> Tensors:
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return [torch.randn(N, D, generator=g, dtype=torch.float64) for _ in range(count)]


def _run(name: str, rows: slice) -> tuple[torch.Tensor, Tensors, dict[str, torch.Tensor]]:
    count, fn = CASES[name]
    tensors = [t[rows].clone().requires_grad_() for t in _inputs(name, count)]
    loss, extra = fn(tensors, rows)
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)  # BYOL's targets get none
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors, strict=True)]
    return loss.detach(), grads, extra


def _batchnorm(rows: slice, group: dist.ProcessGroup | None) -> list[torch.Tensor]:
    """Two training steps of a 2-d batch norm on channels_last float64 input; per-rank loss
    Σ y·r over the local rows (so the ranks' losses add up to the full-batch one)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, 3, 4, 4, generator=g, dtype=torch.float64) * 3 + 2
    upstream = torch.randn(N, 3, 4, 4, generator=g, dtype=torch.float64)
    cls = torch.nn.BatchNorm2d if group is None else GlobalBatchNorm
    layer = cls(3, momentum=None, **({} if group is None else {"process_group": group})).double()
    with torch.no_grad():
        layer.weight.normal_(generator=g), layer.bias.normal_(generator=g)
    out = []
    for step in range(2):
        local = (x[rows] * (step + 1)).contiguous(memory_format=torch.channels_last)
        local.requires_grad_()
        y = layer(local)
        (y * upstream[rows]).sum().backward()
        out += [y.detach(), local.grad]
    return [*out, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var]


def _worker(rank: int, world: int, out_dir: str) -> None:
    results: dict[str, object] = {}
    rows = slice(rank * N // world, (rank + 1) * N // world)
    for name in CASES:
        results[name] = _run(name, rows)
    results["batchnorm"] = _batchnorm(rows, dist.new_group(list(range(world))))
    try:
        with strict_checks():
            gather_with_grad(torch.zeros(3 + rank, 2))
        results["unequal"] = "no error"
    except StrictCheckError as error:
        results["unequal"] = f"{type(error).__name__}: {error}"
    # Only rank 1's embeddings are bad: both ranks must raise, with the same message.
    z = torch.randn(3, 4)
    z[0, 0] = float("nan") if rank == 1 else 0.0
    try:
        with strict_checks():
            ssl_ops.vicreg_loss(z, torch.randn(3, 4))
        results["nan_on_one_rank"] = "no error"
    except StrictCheckError as error:
        results["nan_on_one_rank"] = f"{type(error).__name__}: {error}"
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp_path = tmp_path_factory.mktemp("gloo")
    spawn_gloo(_worker, WORLD, tmp_path, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_match_full_batch(distributed_results: list[dict], name: str) -> None:
    full_loss, full_grads, full_extra = _run(name, slice(0, N))
    losses = torch.stack([results[name][0] for results in distributed_results])
    if name in PER_SAMPLE:
        assert not torch.allclose(losses[0], losses[1])  # each rank's own mean
        losses = losses.mean(dim=0, keepdim=True)
    for loss in losses:
        torch.testing.assert_close(loss, full_loss, rtol=0, atol=1e-6 * max(1, abs(full_loss)))
    factor = GRADIENT_FACTOR.get(name, 1.0)
    for rank, results in enumerate(distributed_results):
        _, grads, extra = results[name]
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        for grad, full_grad in zip(grads, full_grads, strict=True):
            expected = factor * full_grad[rows]
            torch.testing.assert_close(grad / WORLD, expected, rtol=1e-6, atol=1e-9)
        for key, value in full_extra.items():
            torch.testing.assert_close(extra[key], value, rtol=0, atol=1e-6)


def test_global_batchnorm_matches_one_process(distributed_results: list[dict]) -> None:
    full = _batchnorm(slice(0, N), None)
    ranks = [results["batchnorm"] for results in distributed_results]
    for rank, got in enumerate(ranks):
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        for ours, expected in zip(got[:4], full[:4], strict=True):  # y, dx of two steps
            torch.testing.assert_close(ours, expected[rows], rtol=1e-10, atol=1e-10)
        assert got[0].is_contiguous(memory_format=torch.channels_last)
        for ours, expected in zip(got[6:], full[6:], strict=True):  # running statistics
            torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    for i in (4, 5):  # weight and bias gradients: local sums, added up by DDP
        torch.testing.assert_close(ranks[0][i] + ranks[1][i], full[i], rtol=1e-10, atol=1e-10)


def test_unequal_local_batches_raise_on_every_rank(distributed_results: list[dict]) -> None:
    for results in distributed_results:
        assert results["unequal"].startswith("UnequalBatchesError: ")
        assert "same local batch size" in results["unequal"]
        assert "[3, 4]" in results["unequal"]


def test_a_bad_input_on_one_rank_raises_the_same_error_on_every_rank(
    distributed_results: list[dict],
) -> None:
    first, second = (results["nan_on_one_rank"] for results in distributed_results)
    assert first == second
    assert first.startswith("NonFiniteInputError: vicreg_loss: input 0 contains NaN or Inf")
    assert "on rank(s) [1]" in first
