"""CIFAR-10 examples for a fixed epoch budget: linear-probe top-1, epoch time, images/s, data wait.

    .venv/bin/python benchmarks/bench_cifar10_methods.py --epochs 20 [--methods vicreg barlow …]

Runs ``sslpipe run pipelines/examples/cifar10_<method>.yaml --set stages.pretrain.epochs=N``
one method after the other (each alone on the machine, so the throughput figures are its own)
and prints one markdown row per method, next to solo-learn's published 1000-epoch top-1.
Throughput comes from the pretrain stage's per-step history with the first epoch left out
(cuDNN autotuning, DALI start-up); the data-wait share is the time the training loop waited
for the loader over the time of its steps. The examples read ``$SSLPIPE_CIFAR10`` and write
under ``$SSLPIPE_RUNS``; ``--jsonl`` appends each row as JSON as soon as the method is done.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from sslpipe.pipelines.spec.pipeline import load_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "pipelines" / "examples"
# solo-learn, ResNet-18, 1000 epochs, linear probe top-1 (its README's CIFAR-10 table).
PUBLISHED_TOP1 = {"vicreg": 92.07, "barlow": 92.10, "simclr": 90.74, "wmse": 88.67}


def steady_state(history: list[dict[str, float]], global_batch: int) -> dict[str, float]:
    """Epoch time, images/s and data-wait share over every epoch but the first."""
    steps = [record for record in history if record["epoch"] >= 1] or history
    step_seconds = [global_batch / record["images_per_s"] for record in steps]
    wait_seconds = [
        seconds * record["data_wait_share"]
        for seconds, record in zip(step_seconds, steps, strict=True)
    ]
    epochs = len({record["epoch"] for record in steps})
    return {
        "epoch_seconds": sum(step_seconds) / epochs,
        "images_per_s": global_batch * len(steps) / sum(step_seconds),
        "data_wait_share": sum(wait_seconds) / sum(step_seconds),
    }


def run_method(method: str, epochs: int, runs: Path) -> dict[str, object]:
    workdir = runs / f"cifar10_{method}"
    spec_path = EXAMPLES / f"cifar10_{method}.yaml"
    overrides = [f"workdir={workdir}", f"stages.pretrain.epochs={epochs}"]
    sets = [argument for override in overrides for argument in ("--set", override)]
    subprocess.run(
        [sys.executable, "-m", "sslpipe.pipelines.cli", "run", str(spec_path), *sets], check=True
    )
    pretrain = next(
        stage for stage in load_spec(spec_path, overrides).stages if stage.name == "pretrain"
    )
    state = json.loads((workdir / "pretrain" / "state.json").read_text())
    history = [json.loads(line) for line in (workdir / "pretrain" / "history.jsonl").open()]
    probe = json.loads((workdir / "probe" / "metrics.json").read_text())
    wall = datetime.fromisoformat(state["ended"]) - datetime.fromisoformat(state["started"])
    return {
        "method": method,
        "epochs": epochs,
        "top1": probe["top1"],
        "knn_top1": probe["knn"]["k20"]["top1"] if "knn" in probe else None,
        "published_1000_epochs": PUBLISHED_TOP1[method],
        "pretrain_wall_s": wall.total_seconds(),
        **steady_state(history, pretrain.global_batch_size),
    }


def row(result: dict) -> str:
    return (
        f"| {result['method']} | {result['epochs']} | {result['top1']:.2f} "
        f"| {result['published_1000_epochs']:.2f} | {result['epoch_seconds']:.1f} "
        f"| {result['images_per_s']:.0f} | {100 * result['data_wait_share']:.1f} % |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list(PUBLISHED_TOP1))
    parser.add_argument("--runs", type=Path, default=Path(os.environ.get("SSLPIPE_RUNS", "runs")))
    parser.add_argument("--jsonl", type=Path)
    args = parser.parse_args()
    print(
        "| method | epochs | linear top-1 | solo-learn 1000 ep | s/epoch | images/s | data wait |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method in args.methods:
        result = run_method(method, args.epochs, args.runs)
        print(row(result), flush=True)
        if args.jsonl:
            with args.jsonl.open("a") as out:
                out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
