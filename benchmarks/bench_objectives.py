"""Forward+backward time of every ssl_ops objective at the papers' shapes, and RankMe.

python benchmarks/bench_objectives.py                      # N=2048 D=8192 / N=1024 D=128
python benchmarks/bench_objectives.py --scale 0.25 --json  # shrink N and D, JSON output
python benchmarks/bench_objectives.py --only vicreg barlow_twins --precision fp32 tf32 bf16
python benchmarks/bench_objectives.py --only pirl --bank 1281167   # ImageNet-size bank

``--precision`` applies to the objectives with a ``loss_precision`` (the DxD/NxN GEMMs); on a
CPU "tf32" is float32 and "bf16" rounds the inputs but multiplies in float32 (no bf16 GEMM with
a float32 output off CUDA), so precision ratios mean something on a GPU only. ``rankme_svdvals``
is the SVD that ``rankme`` replaced (the alternative people use), timed alongside it. Every row
reports the process's peak resident memory so far (run one objective per process to read it as
that objective's peak).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import statistics
import time
from collections.abc import Callable

import torch

from sslpipe import ssl_ops
from sslpipe.ssl_ops.byol import byol_loss
from sslpipe.ssl_ops.simsiam import simsiam_loss

Loss = Callable[[list[torch.Tensor], dict], torch.Tensor]


@functools.cache
def _bank(rows: int, dim: int) -> ssl_ops.MemoryBank:
    return ssl_ops.MemoryBank(rows, dim)


def _pirl(views: list[torch.Tensor], bank_rows: int) -> torch.Tensor:
    bank = _bank(bank_rows, views[0].shape[1])
    indices = torch.arange(views[0].shape[0])
    return ssl_ops.pirl_nce_loss(views[0], views[1], indices, bank, num_negatives=32000)


def _rankme_svdvals(views: list[torch.Tensor]) -> torch.Tensor:
    sigma = torch.linalg.svdvals(views[0])
    p = sigma / sigma.sum() + 1e-7
    return torch.exp(-(p * p.log()).sum())


# name -> (shape family, number of input tensors, has loss_precision, backward, loss); a loss
# takes the input tensors and the options {"precision": …, "bank": PIRL bank rows}.
CASES: dict[str, tuple[str, int, bool, bool, Loss]] = {
    "vicreg": (
        "wide",
        2,
        True,
        True,
        lambda v, o: ssl_ops.vicreg_loss(*v, loss_precision=o["precision"]),
    ),
    "barlow_twins": (
        "wide",
        2,
        True,
        True,
        lambda v, o: ssl_ops.barlow_twins_loss(*v, loss_precision=o["precision"]),
    ),
    "vicreg_exp": (
        "wide",
        2,
        True,
        True,
        lambda v, o: ssl_ops.vicreg_exp_loss(*v, loss_precision=o["precision"]),
    ),
    "vicreg_ctr": (
        "wide",
        2,
        True,
        True,
        lambda v, o: ssl_ops.vicreg_ctr_loss(*v, loss_precision=o["precision"]),
    ),
    "rankme": ("wide", 1, False, False, lambda v, o: ssl_ops.rankme(v[0])),
    "rankme_svdvals": ("wide", 1, False, False, lambda v, o: _rankme_svdvals(v)),
    "wmse": ("w", 2, False, True, lambda v, o: ssl_ops.wmse_loss(v, w_size=128)),
    "nt_xent": ("narrow", 2, False, True, lambda v, o: ssl_ops.nt_xent_loss(v)),
    "simclr_sq": ("narrow", 2, False, True, lambda v, o: ssl_ops.simclr_sq_loss(v)),
    "dcl": ("narrow", 2, False, True, lambda v, o: ssl_ops.dcl_loss(*v)),
    "dclw": ("narrow", 2, False, True, lambda v, o: ssl_ops.dcl_loss(*v, weighted=True)),
    "spectral": ("narrow", 2, False, True, lambda v, o: ssl_ops.spectral_contrastive_loss(*v)),
    "byol": ("byol", 4, False, True, lambda v, o: byol_loss(*v)),
    "simsiam": ("simsiam", 4, False, True, lambda v, o: simsiam_loss(*v)),
    "pirl": ("narrow", 2, False, True, lambda v, o: _pirl(v, o["bank"])),
}


def shapes(scale: float) -> dict[str, tuple[int, int]]:
    def s(x: int) -> int:
        return max(8, int(x * scale))

    return {
        "wide": (s(2048), s(8192)),
        "narrow": (s(1024), s(128)),
        "w": (s(1024), s(64)),
        "byol": (s(4096), s(256)),  # BYOL: batch 4096, 256-d projections
        "simsiam": (s(512), s(2048)),  # SimSiam: batch 512, 2048-d
    }


def bench(
    loss: Callable[[list[torch.Tensor]], torch.Tensor],
    n: int,
    d: int,
    count: int,
    backward: bool,
    repeat: int,
    warmup: int,
) -> list[float]:
    times = []
    for step in range(warmup + repeat):
        inputs = [torch.randn(n, d, requires_grad=backward) for _ in range(count)]
        start = time.perf_counter()
        out = loss(inputs)
        if backward:
            out.backward()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N and D")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="objective names")
    parser.add_argument("--precision", nargs="*", default=["fp32"], help="fp32 tf32 bf16")
    parser.add_argument("--bank", type=int, default=100_000, help="PIRL memory bank rows")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = shapes(args.scale)
    rows = []
    for name, (family, count, has_precision, backward, loss) in CASES.items():
        if args.only and name not in args.only:
            continue
        n, d = sizes[family]
        if family == "w":
            n = max(128, n - n % 128)
        for precision in args.precision if has_precision else ["fp32"]:
            call = functools.partial(loss, o={"precision": precision, "bank": args.bank})
            times = bench(call, n, d, count, backward, args.repeat, args.warmup)
            rows.append(
                {
                    "objective": name if not has_precision else f"{name}[{precision}]",
                    "N": n,
                    "D": d,
                    "median_ms": 1e3 * statistics.median(times),
                    "min_ms": 1e3 * min(times),
                    "repeat": len(times),
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "pass": "forward+backward (rankme: forward)",
        "pirl_bank_rows": args.bank,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(f"# {meta}")
    header = f"| {'objective':<20} | {'N':>5} | {'D':>5} | {'median ms':>10} | {'min ms':>10} |"
    print(f"{header} peak MB |")
    print(f"|{'-' * 22}|{'-' * 7}|{'-' * 7}|{'-' * 12}|{'-' * 12}|{'-' * 9}|")
    for r in rows:
        print(
            f"| {r['objective']:<20} | {r['N']:>5} | {r['D']:>5} "
            f"| {r['median_ms']:>10.1f} | {r['min_ms']:>10.1f} | {r['peak_rss_mb']:>7.0f} |"
        )


if __name__ == "__main__":
    main()
