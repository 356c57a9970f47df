"""How far VICReg's covariance term moves from float64 at each ``loss_precision`` (on the CPU).

    python benchmarks/bench_covariance_precision.py                    # N 256/2048, D 2048/8192
    python benchmarks/bench_covariance_precision.py --batches 256 --dims 2048 --json

For each shape and each kind of embedding, the term c(Z) of ``ssl_ops.vicreg`` and its gradient
with respect to Z are computed at "fp32" (IEEE float32 GEMM) and "bf16" (inputs rounded to
bf16, products accumulated in float32: on a CPU ``_common._mm`` multiplies the rounded inputs
in float32, the same numbers as a bf16 GEMM with a float32 accumulator up to summation order)
and compared with the same computation in float64: the relative error of the term and the
relative (Frobenius) error of the gradient. "tf32" cannot be measured here: CPUs without AMX
run it as IEEE float32. Two yardsticks: ``batch_noise``, the relative difference of the
float64 term between two independent batches of the same distribution (the sampling noise every
step already carries), and ``bf16_embedding_*``, the error of the float32 computation on
embeddings rounded to bf16 — what a ``precision: bf16`` run's projector already hands the loss
(its last linear layer runs under bf16 autocast).

Embeddings (``--kinds``): ``decorrelated`` (unit Gaussian plus an offset of 3: what VICReg
drives the embeddings towards) and ``correlated`` (the same plus a shared rank-64 component
as large as the rest: the start of training).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from sslpipe.ssl_ops._common import off_diagonal
from sslpipe.ssl_ops.vicreg import covariance_matrix

RANK = 64  # of the shared component of "correlated" embeddings
OFFSET = 3.0


def embeddings(kind: str, n: int, d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=generator, dtype=torch.float64) + OFFSET
    if kind == "correlated":
        shared = torch.randn(n, RANK, generator=generator, dtype=torch.float64)
        mixing = torch.randn(RANK, d, generator=generator, dtype=torch.float64) / RANK**0.5
        z = z + shared @ mixing
    return z


def covariance_term(z: torch.Tensor, precision: str) -> tuple[float, torch.Tensor]:
    """c(Z) at ``precision`` and its gradient, both as float64."""
    z = z.detach().clone().requires_grad_()
    term = off_diagonal(covariance_matrix(z, precision)).pow(2).sum() / z.shape[1]
    term.backward()
    assert z.grad is not None
    return float(term.detach()), z.grad.double()


def measure(kind: str, n: int, d: int) -> dict[str, object]:
    z = embeddings(kind, n, d, seed=0)
    reference, reference_grad = covariance_term(z, "fp32")  # float64 input: a float64 GEMM
    other, _ = covariance_term(embeddings(kind, n, d, seed=1), "fp32")
    row: dict[str, object] = {
        "kind": kind,
        "n": n,
        "d": d,
        "term": round(reference, 4),
        "batch_noise": float(f"{abs(other - reference) / reference:.3g}"),
    }
    cases = {
        "fp32": (z.float(), "fp32"),
        "bf16": (z.float(), "bf16"),
        "bf16_embedding": (z.bfloat16().float(), "fp32"),
    }
    for name, (inputs, precision) in cases.items():
        start = time.perf_counter()
        value, grad = covariance_term(inputs, precision)
        row[f"{name}_term_error"] = float(f"{abs(value - reference) / reference:.3g}")
        error = (grad - reference_grad).norm() / reference_grad.norm()
        row[f"{name}_grad_error"] = float(f"{float(error):.3g}")
        row[f"{name}_cpu_s"] = round(time.perf_counter() - start, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument(
        "--kinds", nargs="+", default=["decorrelated", "correlated"],
        choices=["decorrelated", "correlated"],
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for d in args.dims:
        for n in args.batches:
            for kind in args.kinds:
                row = measure(kind, n, d)
                text = "  ".join(f"{key}={value}" for key, value in row.items())
                print(json.dumps(row) if args.json else text, flush=True)


if __name__ == "__main__":
    main()
