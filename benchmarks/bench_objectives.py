"""Forward+backward time of every ssl_ops objective at the papers' shapes (float32).

python benchmarks/bench_objectives.py                      # N=2048 D=8192 / N=1024 D=128
python benchmarks/bench_objectives.py --scale 0.25 --json  # shrink N and D, JSON output
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from sslpipe import ssl_ops

Loss = Callable[[list[torch.Tensor]], torch.Tensor]


@functools.cache
def _bank(dim: int) -> ssl_ops.MemoryBank:
    return ssl_ops.MemoryBank(100_000, dim)


def _pirl(views: list[torch.Tensor]) -> torch.Tensor:
    bank = _bank(views[0].shape[1])
    indices = torch.arange(views[0].shape[0])
    return ssl_ops.pirl_nce_loss(views[0], views[1], indices, bank, num_negatives=32000)


# name -> (shape family, number of views, loss)
CASES: dict[str, tuple[str, int, Loss]] = {
    "vicreg": ("wide", 2, lambda v: ssl_ops.vicreg_loss(*v)),
    "barlow_twins": ("wide", 2, lambda v: ssl_ops.barlow_twins_loss(*v)),
    "vicreg_exp": ("wide", 2, lambda v: ssl_ops.vicreg_exp_loss(*v)),
    "vicreg_ctr": ("wide", 2, lambda v: ssl_ops.vicreg_ctr_loss(*v)),
    "wmse": ("w", 2, lambda v: ssl_ops.wmse_loss(v, w_size=128)),
    "nt_xent": ("narrow", 2, lambda v: ssl_ops.nt_xent_loss(v)),
    "simclr_sq": ("narrow", 2, lambda v: ssl_ops.simclr_sq_loss(v)),
    "dcl": ("narrow", 2, lambda v: ssl_ops.dcl_loss(*v)),
    "dclw": ("narrow", 2, lambda v: ssl_ops.dcl_loss(*v, weighted=True)),
    "spectral": ("narrow", 2, lambda v: ssl_ops.spectral_contrastive_loss(*v)),
    "pirl": ("narrow", 2, _pirl),
}


def shapes(scale: float) -> dict[str, tuple[int, int]]:
    def s(x: int) -> int:
        return max(8, int(x * scale))

    return {"wide": (s(2048), s(8192)), "narrow": (s(1024), s(128)), "w": (s(1024), s(64))}


def bench(loss: Loss, n: int, d: int, views: int, repeat: int, warmup: int) -> list[float]:
    times = []
    for step in range(warmup + repeat):
        inputs = [torch.randn(n, d, requires_grad=True) for _ in range(views)]
        start = time.perf_counter()
        loss(inputs).backward()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every N and D")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="objective names")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = shapes(args.scale)
    rows = []
    for name, (family, views, loss) in CASES.items():
        if args.only and name not in args.only:
            continue
        n, d = sizes[family]
        if family == "w":
            n = max(128, n - n % 128)
        times = bench(loss, n, d, views, args.repeat, args.warmup)
        rows.append(
            {
                "objective": name,
                "N": n,
                "D": d,
                "median_ms": 1e3 * statistics.median(times),
                "min_ms": 1e3 * min(times),
                "repeat": len(times),
            }
        )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "dtype": "float32",
        "pass": "forward+backward",
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(f"# {meta}")
    print(f"| {'objective':<13} | {'N':>5} | {'D':>5} | {'median ms':>10} | {'min ms':>10} |")
    print(f"|{'-' * 15}|{'-' * 7}|{'-' * 7}|{'-' * 12}|{'-' * 12}|")
    for r in rows:
        print(
            f"| {r['objective']:<13} | {r['N']:>5} | {r['D']:>5} "
            f"| {r['median_ms']:>10.1f} | {r['min_ms']:>10.1f} |"
        )


if __name__ == "__main__":
    main()
