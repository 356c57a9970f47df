"""Size and write time of a pretrain checkpoint for ResNet-50 + the 8192-8192-8192 expander
(the ImageNet VICReg example), against the layout before (a duplicate ``encoder.pt`` and
``backbone.pt`` in every checkpoint).

    .venv/bin/python benchmarks/bench_checkpoint.py [--method vicreg] [--repeats 3]

What is saved is what ``pipelines/training/checkpoint.py`` saves: the method's state dict, the
optimizer (LARS momentum buffers populated by one step) and the scheduler. Times are
``torch.save`` to the local disk (the upload to ``storage_path`` then runs asynchronously).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.pipelines.training.step import build_training_method
from sslpipe.ssl_ops.optim import build_optimizer


def _write(directory: Path, payload: dict[str, object]) -> tuple[int, float]:
    start = time.perf_counter()
    for name, value in payload.items():
        torch.save(value, directory / name)
    seconds = time.perf_counter() - start
    return sum(f.stat().st_size for f in directory.iterdir()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", default="vicreg")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = PretrainConfig.model_validate(
        {"name": "p", "type": "pretrain", "data": "d", "method": args.method,
         "backbone": "resnet50", "global_batch_size": 2048, "num_workers": 8}
    )  # fmt: skip
    method = build_training_method(config, 0, 1, torch.device("cpu"))
    optimizer = build_optimizer(
        config.optimizer_name(), method, lr=config.learning_rate(), weight_decay=1e-6
    )
    for p in method.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # the momentum buffers exist from the first step on
    state = {"method": method.state_dict(), "optimizer": optimizer.state_dict()}
    layouts = {
        "periodic checkpoint (now)": {"state.pt": state},
        "final checkpoint (now)": {
            "state.pt": state,
            "backbone.pt": method.backbone.state_dict(),
            "encoder.pt": method.encoder().state_dict(),
        },
        "every checkpoint (before)": {
            "state.pt": {"encoder": method.state_dict(), "optimizer": optimizer.state_dict()},
            "backbone.pt": method.backbone.state_dict(),
            "encoder.pt": method.state_dict(),
        },
    }
    parameters = sum(p.numel() for p in method.parameters())
    print(f"{args.method} resnet50 + {list(config.projector_dims())}: {parameters / 1e6:.1f} M")
    for name, payload in layouts.items():
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(_write(Path(tmp), payload))
        size, seconds = runs[0][0], min(s for _, s in runs)
        print(
            json.dumps({"layout": name, "GB": round(size / 1e9, 3), "seconds": round(seconds, 2)})
        )


if __name__ == "__main__":
    main()
