"""The GPU proof (issue 12) in one command: one JSON file, at most 8 minutes on one GPU.

    python benchmarks/gpu_check.py --out gpu_check.json           # on a machine with a GPU
    python benchmarks/gpu_check.py --smoke --out smoke.json       # every part, tiny, on a CPU

Parts, in this order; one that fails records its error and the others still run:

1. ``step``: ResNet-50 + 8192-8192-8192 expander, VICReg, bf16 autocast, ``channels_last``,
   64 and 256 images per GPU, fed a device-resident batch: ms per step, images/s, peak memory.
2. ``loss``: the VICReg loss at D = 8192 for a global batch of 2,048, forward + backward in
   fp32 / tf32 / bf16 (``loss: {loss_precision: …}``): ms, and the relative error of the loss
   against float64.
3. ``loader``: DALI on the GPU at 224 px from ImageNet-size JPEGs (~500×375, ``imagenet_like``):
   ``vicreg`` at 4 / 8 / 12 threads, decode once vs per view, ``hw_decoder_load`` 0 / 0.65 / 1;
   ``pirl`` and ``multicrop``; source images/s (``datasets.loader_bench``: warm-up batches not
   counted, for every row alike).
4. ``data_bound``: the step of part 1 at 256 images fed by the DALI GPU loader vs by a replay of
   its first batch (``ReplayLoader``): share = 1 − step(replay) / step(real).
5. ``methods``: PIRL (image + jigsaw views) and SimCLR with multi-crop (2 + 6 views) on
   ResNet-50, fed by DALI on the GPU: a few steps each, finite losses.
6. ``probe``: probe feature extraction images/s (ResNet-50, bf16, DALI ``eval`` views).

Every step runs the worker's own code (``pipelines.training.step``: method, optimizer, lr
schedule, ``train_step``), with CUDA synchronised before each clock read. The targets of issue 12
are checked at the end (``targets``): ≥ 3,000 source images/s for ``vicreg`` at 224 px, data-bound
share < 5 % of a ResNet-50 step, PIRL and multi-crop steps finite.

Dependencies on a GPU machine that has only torch (the device machines here: torch,
torchvision, numpy, Pillow, PyYAML, safetensors, tqdm, scikit-image): this script needs neither
Ray nor webdataset, only DALI and pydantic besides. On a machine with pip and no network, on
this side (Python 3.12 there):

    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        nvidia-dali-cuda130 pydantic pydantic-core annotated-types typing-inspection
    split -b 60M .whl/nvidia_dali_cuda130-*.whl .whl/dali.part-   # ~200 MB → 60 MB parts

Where one transfer is capped (64 MiB a call on the device tool), send each ``dali.part-*`` in
its own call to the same warm machine, each call appending it to ``/tmp/dali.whl`` there
(``cat .whl/dali.part-aa >> /tmp/dali.whl``); the last call sends the small wheels and runs

    mv /tmp/dali.whl /tmp/nvidia_dali_cuda130-<version>-py3-none-manylinux_2_28_x86_64.whl
    pip install -q --no-index --no-deps --target /tmp/site /tmp/nvidia_dali_*.whl .whl/*.whl
    pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
    PYTHONPATH=/tmp/site python benchmarks/gpu_check.py --out $OUT/gpu_check.json

README, "GPU check", has the figures of the last run and the machine they came from.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sslpipe.datasets.ingest import ingest, split_shards
from sslpipe.datasets.loader_bench import measure
from sslpipe.datasets.loaders import LoaderConfig, build_loader
from sslpipe.datasets.recipes import get_recipe
from sslpipe.datasets.sources import ImageFolderSource, SyntheticShapesSource
from sslpipe.pipelines.probe_features import measure_extraction
from sslpipe.pipelines.stages.pretrain import PretrainConfig
from sslpipe.pipelines.training.batches import ReplayLoader, prepare_batch
from sslpipe.pipelines.training.step import (
    build_scheduler,
    build_training_method,
    build_training_optimizer,
    train_step,
)
from sslpipe.ssl_ops import build_backbone
from sslpipe.ssl_ops.vicreg import vicreg_loss

TARGET_IMAGES_PER_S = 3000  # vicreg, 224 px, two views, per GPU
TARGET_DATA_BOUND = 0.05
RUN_STEPS = 10**6  # the length of run the steps belong to: schedules stay near their start


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the full check on a GPU, or a smoke run of the same code."""

    images: int  # ImageNet-size JPEGs the loader parts read
    backbone: str
    projector: tuple[int, ...]
    step_batches: tuple[int, ...]
    real_batch: int  # per GPU, for data_bound and methods
    loss_batch: int
    loss_dim: int
    threads: tuple[int, ...]
    loader_threads: int  # the one thread count of the other loader rows
    hw_decoder_loads: tuple[float, ...]
    loader_seconds: float
    warmup_steps: int
    timed_steps: int
    probe_seconds: float


FULL = Sizes(
    images=2000,
    backbone="resnet50",
    projector=(8192, 8192, 8192),
    step_batches=(64, 256),
    real_batch=256,
    loss_batch=2048,
    loss_dim=8192,
    threads=(4, 8, 12),
    loader_threads=8,
    hw_decoder_loads=(0.0, 0.65, 1.0),
    loader_seconds=8.0,
    warmup_steps=5,
    timed_steps=20,
    probe_seconds=15.0,
)
SMOKE = Sizes(
    images=32,
    backbone="small_cnn",
    projector=(64, 64, 64),
    step_batches=(4,),
    real_batch=8,
    loss_batch=64,
    loss_dim=64,
    threads=(1,),
    loader_threads=1,
    hw_decoder_loads=(0.65,),
    loader_seconds=0.3,
    warmup_steps=1,
    timed_steps=2,
    probe_seconds=0.3,
)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Preset → the method that trains with it here; on a CPU smoke run, its views at 32 px
# (multi-crop: 2 × 32 + 6 × 16 px).
PRESET_METHOD = {"vicreg": "vicreg", "pirl": "pirl", "multicrop": "simclr"}
SMOKE_VIEWS: dict[str, Any] = {
    "vicreg": "vicreg_cifar",
    "pirl": "pirl_cifar",
    "multicrop": [
        {"preset": "multicrop", "index": 0, "repeat": 2, "size": 32},
        {"preset": "multicrop", "index": 2, "repeat": 6, "size": 16},
    ],
}


def _pretrain_config(preset: str, sizes: Sizes, batch: int, **extra: Any) -> PretrainConfig:
    """A one-worker pretrain stage training with ``preset``'s views (at 32 px on a smoke run);
    its ``recipes()`` are the loader's recipes, as in the worker."""
    return PretrainConfig.model_validate(
        {
            "name": "pretrain",
            "type": "pretrain",
            "data": "data",
            "method": PRESET_METHOD[preset],
            "backbone": sizes.backbone,
            "views": SMOKE_VIEWS[preset] if sizes is SMOKE else preset,
            "global_batch_size": batch,
            "num_workers": 1,
            "use_gpu": torch.cuda.is_available(),
            **extra,
        }
    )


def _loader(config: PretrainConfig, shards: list[Path], threads: int) -> Any:
    """The DALI loader a worker of ``config`` builds (on the GPU where there is one)."""
    loader_config = LoaderConfig(
        batch_size=config.global_batch_size,
        num_threads=threads,
        with_index=config.card().needs_indices,
    )
    return build_loader("dali", shards, config.recipes(), loader_config)


class Training:
    """One process's training step, built as a worker builds it."""

    def __init__(self, config: PretrainConfig, device: torch.device, num_samples: int) -> None:
        self.config, self.device = config, device
        self.method = build_training_method(config, num_samples, 1, device)
        self.optimizer = build_training_optimizer(config, self.method)
        self.scheduler = build_scheduler(config, self.optimizer, steps_per_epoch=RUN_STEPS)
        self.step = 0

    def run(self, batches: Iterator[Any], steps: int) -> tuple[float, list[float]]:
        """Seconds per step over ``steps`` steps, and their losses."""
        losses = []
        _synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            views, batch = prepare_batch(next(batches), self.device)
            self.step += 1
            output = train_step(
                self.method, self.method, views, batch, self.optimizer, self.scheduler,
                self.config, self.step, RUN_STEPS,
            )  # fmt: skip
            losses.append(output.losses["loss"].detach())
        _synchronize(self.device)
        seconds = (time.perf_counter() - start) / steps
        return seconds, [float(loss) for loss in losses]


def _endless(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def part_step(sizes: Sizes, device: torch.device, shards: list[Path]) -> dict[str, Any]:
    rows = []
    for batch in sizes.step_batches:
        config = _pretrain_config("vicreg", sizes, batch, projector=list(sizes.projector))
        training = Training(config, device, sizes.images)
        side = config.recipes()[0].size
        views = [torch.randn(batch, 3, side, side, device=device) for _ in range(2)]
        batches = itertools.repeat((views, torch.zeros(batch, dtype=torch.long, device=device)))
        training.run(batches, sizes.warmup_steps)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, losses = training.run(batches, sizes.timed_steps)
        rows.append(
            {
                "batch_per_gpu": batch,
                "ms_per_step": round(1000 * seconds, 2),
                "images_per_s": round(batch / seconds, 1),
                "peak_memory_gib": _peak_gib(device),
                "loss_finite": all(map(_finite, losses)),
            }
        )
        del training
    return {"backbone": sizes.backbone, "projector": list(sizes.projector), "rows": rows}


def part_loss(sizes: Sizes, device: torch.device, shards: list[Path]) -> dict[str, Any]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    z = [torch.randn(sizes.loss_batch, sizes.loss_dim, generator=generator) for _ in range(2)]
    reference = float(vicreg_loss(*(t.double().to(device) for t in z)))
    rows = []
    for precision in ("fp32", "tf32", "bf16"):
        z1, z2 = (t.to(device).requires_grad_() for t in z)
        vicreg_loss(z1, z2, loss_precision=precision).backward()  # warm-up
        _synchronize(device)
        start, repeats = time.perf_counter(), 10
        for _ in range(repeats):
            loss = vicreg_loss(z1, z2, loss_precision=precision)
            loss.backward()
        _synchronize(device)
        rows.append(
            {
                "loss_precision": precision,
                "ms_forward_backward": round(1000 * (time.perf_counter() - start) / repeats, 3),
                "relative_error": abs(loss.item() - reference) / abs(reference),
            }
        )
    return {"batch": sizes.loss_batch, "dim": sizes.loss_dim, "rows": rows}


def part_loader(sizes: Sizes, device: torch.device, shards: list[Path]) -> dict[str, Any]:
    grid: list[tuple[str, int, str, float]] = []
    grid += [("vicreg", threads, "once", 0.65) for threads in sizes.threads]
    grid += [("vicreg", threads, "per_view", 0.65) for threads in sizes.threads]
    grid += [("vicreg", sizes.loader_threads, "once", load) for load in sizes.hw_decoder_loads]
    grid += [(preset, sizes.loader_threads, "once", 0.65) for preset in ("pirl", "multicrop")]
    rows = []
    for preset, threads, decode, load in dict.fromkeys(grid):
        recipes = _pretrain_config(preset, sizes, sizes.real_batch).recipes()
        config = LoaderConfig(
            batch_size=sizes.real_batch, num_threads=threads, decode=decode, hw_decoder_load=load
        )
        row = measure(shards, recipes, config, seconds=sizes.loader_seconds)
        rows.append({"recipe": preset, **row})
    return {"images": sizes.images, "rows": rows}


def part_data_bound(sizes: Sizes, device: torch.device, shards: list[Path]) -> dict[str, Any]:
    config = _pretrain_config("vicreg", sizes, sizes.real_batch, projector=list(sizes.projector))
    replay = ReplayLoader(_loader(config, shards, sizes.loader_threads), device)
    steps = {}
    for name, source in (
        ("replay", replay),
        ("real", _loader(config, shards, sizes.loader_threads)),
    ):
        training = Training(config, device, sizes.images)
        batches = _endless(source)
        training.run(batches, sizes.warmup_steps)
        steps[name], _ = training.run(batches, sizes.timed_steps)
        del training
    return {
        "batch_per_gpu": sizes.real_batch,
        "threads": sizes.loader_threads,
        "ms_per_step_real": round(1000 * steps["real"], 2),
        "ms_per_step_replay": round(1000 * steps["replay"], 2),
        "data_bound_share": round(1 - steps["replay"] / steps["real"], 4),
    }


def part_methods(sizes: Sizes, device: torch.device, shards: list[Path]) -> dict[str, Any]:
    rows = []
    for preset in ("pirl", "multicrop"):
        config = _pretrain_config(preset, sizes, sizes.real_batch)
        training = Training(config, device, sizes.images)
        batches = _endless(_loader(config, shards, sizes.loader_threads))
        seconds, losses = training.run(batches, sizes.warmup_steps + sizes.timed_steps)
        rows.append(
            {
                "method": config.method,
                "views": preset,
                "batch_per_gpu": sizes.real_batch,
                "steps": len(losses),
                "ms_per_step_with_warmup": round(1000 * seconds, 2),
                "loss_finite": all(map(_finite, losses)),
                "last_loss": losses[-1],
            }
        )
        del training
    return {"rows": rows}


def part_probe(sizes: Sizes, device: torch.device, shards: list[Path]) -> dict[str, Any]:
    recipe = get_recipe("eval_cifar" if sizes is SMOKE else "eval")[0]
    rate = measure_extraction(
        shards,
        build_backbone(sizes.backbone),
        recipe=recipe,
        batch_size=sizes.real_batch,
        threads=sizes.loader_threads,
        use_gpu=device.type == "cuda",
        seconds=sizes.probe_seconds,
    )
    return {"backbone": sizes.backbone, "images_per_s": round(rate, 1)}


PARTS: dict[str, Callable[[Sizes, torch.device, list[Path]], dict[str, Any]]] = {
    "step": part_step,
    "loss": part_loss,
    "loader": part_loader,
    "data_bound": part_data_bound,
    "methods": part_methods,
    "probe": part_probe,
}


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 12's targets, from the parts that ran."""
    checks: dict[str, Any] = {}
    loader = results.get("loader", {}).get("rows", [])
    vicreg = [r["images_per_s"] for r in loader if r["recipe"] == "vicreg"]
    if vicreg:
        checks["vicreg_images_per_s"] = {"best": max(vicreg), "target": TARGET_IMAGES_PER_S,
                                         "met": max(vicreg) >= TARGET_IMAGES_PER_S}  # fmt: skip
    if "data_bound_share" in results.get("data_bound", {}):
        share = results["data_bound"]["data_bound_share"]
        checks["data_bound_share"] = {"value": share, "target": TARGET_DATA_BOUND,
                                      "met": share < TARGET_DATA_BOUND}  # fmt: skip
    for row in results.get("methods", {}).get("rows", []):
        checks[f"{row['method']}_{row['views']}_step"] = {"met": row["loss_finite"]}
    return checks


def machine(device: torch.device) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "device": str(device)}  # fmt: skip
    with contextlib.suppress(ImportError):
        import nvidia.dali

        info["dali"] = nvidia.dali.__version__
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _shards(sizes: Sizes, folder: Path) -> list[Path]:
    """Shards of ImageNet-size JPEGs (``imagenet_like``, needs scikit-image), or of the
    project's synthetic 64 px shapes on a smoke run."""
    if sizes is SMOKE:
        source: Any = SyntheticShapesSource(sizes.images, image_size=64)
    else:
        from imagenet_like import write_image_folder

        source = ImageFolderSource(write_image_folder(folder / "images", sizes.images))
    ingest(source, folder / "shards", shard_size=500, val_fraction=0)
    return split_shards(folder / "shards", "train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("no CUDA GPU here; --smoke runs every part at tiny sizes on the CPU")
    began = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(device), "sizes": asdict(sizes)}
    with tempfile.TemporaryDirectory() as tmp:
        shards = _shards(sizes, Path(tmp))
        results["setup_s"] = round(time.perf_counter() - began, 1)
        for name in args.parts.split(","):
            start = time.perf_counter()
            try:
                results[name] = PARTS[name](sizes, device, shards)
            except Exception as error:  # one part's failure is a result; the rest still run
                results[name] = {"error": f"{type(error).__name__}: {error}",
                                 "traceback": traceback.format_exc()}  # fmt: skip
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(f"[gpu_check] {name}: {json.dumps(results[name])[:400]}", flush=True)
    results["targets"] = targets(results)
    results["total_s"] = round(time.perf_counter() - began, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"[gpu_check] {args.out}: {results['total_s']} s; targets {results['targets']}")


if __name__ == "__main__":
    main()
