"""The GPU proof in one command: one JSON file, rewritten after every part, ≤ 8 min on one H100.

    python benchmarks/gpu_check.py --preflight --out preflight.json  # ≤ 30 s: is this node ready?
    python benchmarks/gpu_check.py --out gpu_check.json              # everything (8 min deadline)
    python benchmarks/gpu_check.py --smoke --out smoke.json          # every part, tiny, on a CPU

The parts, in order, each with its budget on one H100 (printed at the start). ``--deadline-s``
(default 480 s, 60 s with ``--preflight``) skips a part whose budget would end past it; a part
that fails records its error and the others still run; the parts that need the data set are
skipped when its setup failed.

* preflight (also the start of the full check; on a CPU the GPU-only checks say what they
  skipped): ``imports`` (every runtime module, with versions), ``decode`` (a DALI ``mixed``
  decode of JPEGs made here: baseline 4:2:0 and 4:4:4, progressive, grayscale, odd sizes;
  pixels against PIL, and for each image the nvImageCodec backend DALI's mixed decoder gives
  it: hardware, cuda, hybrid or cpu), ``nccl`` (one all-reduce in a group of one), ``memory``.
* ``setup``: ImageNet-size JPEGs (~500×375) cut from scikit-image's photographs
  (``imagenet_like``), ingested into shards.
* ``step``: the worker's ``train_step`` fed a device-resident batch, one row per entry of
  ``STEP_ROWS`` (VICReg ResNet-50 at 64 and 256 images per GPU in bf16, and at 256 in fp32
  with TF32; DINO ViT-S/16 and MAE ViT-B/16 in bf16): ms per step, images/s per GPU, peak
  memory. A row whose method or backbone this build lacks is skipped with a note.
* ``covariance``: the VICReg loss at the global batch of the ImageNet example (N = 2048,
  D = 8192), forward + backward with ``loss_precision`` fp32 / tf32 / bf16: ms and the relative
  error against float64.
* ``loader``: the DALI GPU loader's rows that decide a default: threads 4 / 6 / 8 (the specs
  use 6), decode once vs per view, ``hw_decoder_load`` 0 / 0.65 / 1, then PIRL and multi-crop
  at the defaults. Source images/s after warm-up, each batch synchronised before it counts.
  The part also reports which backend decodes the data set's JPEGs.
* ``data_bound``: the VICReg ResNet-50 step at 256 images fed a replay of one batch, the DALI
  loader, and the replay again, at the spec's thread count: share = 1 − step(replay) /
  step(real), and the device's data wait under the real loader (``DataWaitClock``). A negative
  share (the replays slower than the real run: noise larger than the effect) is not met.
* ``methods``: PIRL (image + jigsaw views) and SimCLR multi-crop (2 + 6 views) on ResNet-50 fed
  by DALI on the GPU: a few steps each, finite losses.
* ``probe``: probe feature extraction images/s (ResNet-50, bf16, DALI ``eval`` views).

Targets checked at the end (``targets``): the preflight, ≥ 3,000 source images/s for ``vicreg``
at 224 px, 0 ≤ data-bound share < 5 %, finite losses.

Install on a node without network: the offline wheelhouse (``make wheelhouse``, carried in
parts of at most 60 MiB and installed by ``deploy/install-offline.sh``;
``docs/offline-install.md``) holds every runtime dependency, DALI's included; then

    python benchmarks/gpu_check.py --preflight --out $OUT/preflight.json
    python benchmarks/gpu_check.py --out $OUT/gpu_check.json

README, "GPU check", has the figures of the last run and the machine they came from.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.metadata
import itertools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

# The project's modules are imported where a part uses them, so that a missing dependency is
# the ``imports`` part's finding, not a crash before the first line of the JSON.

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
EXAMPLE = REPO / "pipelines" / "examples" / "imagenet_vicreg_resnet50.yaml"

TARGET_IMAGES_PER_S = 3000  # vicreg, 224 px, two views, per GPU
TARGET_DATA_BOUND = 0.05
RUN_STEPS = 10**6  # the length of run the steps belong to: schedules stay near their start
FULL_DEADLINE_S, PREFLIGHT_DEADLINE_S = 480.0, 60.0
RUNTIME_MODULES = (
    "torch", "torchvision", "timm", "numpy", "PIL", "yaml", "pydantic", "safetensors",
    "webdataset", "nvidia.dali", "nvidia.dali.plugin.pytorch", "nvidia.nvimgcodec", "ray",
    "ray.train.torch", "sslpipe.pipelines.cli.main", "sslpipe.datasets.dali_views",
)  # fmt: skip


@functools.cache
def _example_pretrain() -> dict[str, Any]:
    """The pretrain stage of the ImageNet VICReg example: its thread count and loss settings
    are what the check measures."""
    stages = yaml.safe_load(EXAMPLE.read_text())["stages"]
    return next(stage for stage in stages if stage["type"] == "pretrain")


@dataclass(frozen=True)
class StepRow:
    """One row of the step part: ``method`` on ``backbone`` with ``views`` at ``batch`` images
    per GPU, autocast ``precision``, TF32 for float32 GEMMs and convolutions with ``tf32``;
    ``fields``: more pretrain-stage fields (projector, loss, method_options)."""

    name: str
    method: str
    backbone: str
    views: str | list[dict[str, Any]]
    batch: int
    precision: str = "bf16"
    tf32: bool = False
    fields: Mapping[str, Any] = field(default_factory=dict)


def _vicreg_fields(projector: Sequence[int]) -> dict[str, Any]:
    return {"projector": list(projector), "loss": _example_pretrain()["loss"]}


@dataclass(frozen=True)
class Sizes:
    """How big each part is: the full check on a GPU, or a smoke run of the same code."""

    images: int  # ImageNet-size JPEGs the loader parts read
    backbone: str
    projector: tuple[int, ...]
    real_batch: int  # per GPU, for data_bound and methods
    covariance_batch: int
    covariance_dim: int
    threads: tuple[int, ...]  # the loader rows' thread counts
    loader_threads: int  # the spec's: every other loader row, data_bound, methods, probe
    hw_decoder_loads: tuple[float, ...]
    loader_seconds: float
    warmup_steps: int
    timed_steps: int
    probe_seconds: float
    smoke: bool


FULL = Sizes(
    images=2000,
    backbone="resnet50",
    projector=(8192, 8192, 8192),
    real_batch=256,
    covariance_batch=2048,
    covariance_dim=8192,
    threads=(4, 6, 8),
    loader_threads=_example_pretrain()["dali_threads"],
    hw_decoder_loads=(0.0, 0.65, 1.0),
    loader_seconds=6.0,
    warmup_steps=5,
    timed_steps=20,
    probe_seconds=10.0,
    smoke=False,
)
SMOKE = Sizes(
    images=32,
    backbone="small_cnn",
    projector=(64, 64, 64),
    real_batch=8,
    covariance_batch=64,
    covariance_dim=64,
    threads=(1,),
    loader_threads=1,
    hw_decoder_loads=(0.65,),
    loader_seconds=0.3,
    warmup_steps=1,
    timed_steps=2,
    probe_seconds=0.3,
    smoke=True,
)

# DINO's crops on a smoke run: its two 32 px globals and two of its 16 px locals.
SMOKE_DINO_VIEWS = [
    {"preset": "dino_cifar", "index": 0},
    {"preset": "dino_cifar", "index": 1},
    {"preset": "dino_cifar", "index": 2, "repeat": 2},
]
# One row per line: a method added to the project is one more row here.
# fmt: off
_VICREG = ("vicreg", "resnet50", "vicreg")
STEP_ROWS = {
    FULL: (
        StepRow("vicreg_resnet50", *_VICREG, 64, fields=_vicreg_fields(FULL.projector)),
        StepRow("vicreg_resnet50", *_VICREG, 256, fields=_vicreg_fields(FULL.projector)),
        StepRow("vicreg_resnet50_tf32", *_VICREG, 256, precision="fp32", tf32=True,
                fields=_vicreg_fields(FULL.projector)),
        # 64 per GPU, as the official runs: DINO 1024 on 16 GPUs, MAE 4096 on 64.
        StepRow("dino_vit_small_patch16", "dino", "vit_small_patch16", "dino", 64),
        StepRow("mae_vit_base_patch16", "mae", "vit_base_patch16", "mae", 64),
    ),
    SMOKE: (
        StepRow("vicreg_small_cnn", "vicreg", "small_cnn", "vicreg_cifar", 4,
                fields=_vicreg_fields(SMOKE.projector)),
        StepRow("vicreg_small_cnn_tf32", "vicreg", "small_cnn", "vicreg_cifar", 4,
                precision="fp32", tf32=True, fields=_vicreg_fields(SMOKE.projector)),
        StepRow("dino_vit_mini_patch4", "dino", "vit_mini_patch4", SMOKE_DINO_VIEWS, 4,
                fields={"projector": [64, 64, 32], "method_options": {"out_dim": 64}}),
        StepRow("mae_vit_mini_patch4", "mae", "vit_mini_patch4", "mae_cifar", 4,
                fields={"method_options": {"decoder_dim": 64, "decoder_depth": 1,
                                           "decoder_heads": 4}}),
    ),
}
# fmt: on


@dataclass
class Context:
    sizes: Sizes
    device: torch.device
    folder: Path  # scratch space
    shards: list[Path] = field(default_factory=list)  # set by ``setup``
    jpegs: list[Path] = field(default_factory=list)  # a few of the data set's JPEGs

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- preflight ----------------------------------------------------------------------------------


def part_imports(ctx: Context) -> dict[str, Any]:
    modules: dict[str, str] = {}
    for name in RUNTIME_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception as error:  # an import that fails for any reason is the finding
            modules[name] = f"missing: {type(error).__name__}: {error}"
            continue
        version = getattr(module, "__version__", None)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            version = version or importlib.metadata.version(name.split(".")[0])
        modules[name] = str(version or "ok")
    missing = [name for name, found in modules.items() if found.startswith("missing")]
    return {"modules": modules, "missing": missing, "ok": not missing}


# name → (width, height, PIL mode, PIL save options): what a data set's JPEGs may be.
JPEG_CASES: dict[str, tuple[int, int, str, dict[str, Any]]] = {
    "baseline_420": (500, 375, "RGB", {"quality": 90}),
    "baseline_444": (375, 500, "RGB", {"quality": 95, "subsampling": 0}),
    "progressive": (500, 375, "RGB", {"quality": 90, "progressive": True}),
    "grayscale": (333, 257, "L", {"quality": 90}),
    "odd_size": (1023, 517, "RGB", {"quality": 85}),
}
# DALI's mixed decoder hands nvImageCodec these backends in this order, the hardware decoder
# taking the ``hw_decoder_load`` share (NVIDIA/DALI dali/operators/imgcodec/image_decoder.h,
# the ``backends_`` list); the first that decodes an image is the one it gets.
DECODER_BACKENDS = {"hardware": "HW_GPU_ONLY", "cuda": "GPU_ONLY", "hybrid": "HYBRID_CPU_GPU",
                    "cpu": "CPU_ONLY"}  # fmt: skip


def write_test_jpegs(folder: Path) -> dict[str, Path]:
    """One smooth test picture per ``JPEG_CASES`` entry."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (width, height, mode, options) in JPEG_CASES.items():
        y, x = np.mgrid[0:height, 0:width] / max(width, height)
        rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(12 * x * y)], axis=-1)
        image = Image.fromarray((255 * rgb).astype(np.uint8)).convert(mode)
        paths[name] = folder / f"{name}.jpg"
        image.save(paths[name], format="JPEG", **options)
    return paths


class BackendProbe:
    """Which nvImageCodec backend decodes a JPEG first, in DALI's order (on a CPU: cpu only)."""

    def __init__(self, on_gpu: bool) -> None:
        from nvidia import nvimgcodec

        device = {} if on_gpu else {"device_id": nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY}
        self.decoders: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        for name in DECODER_BACKENDS if on_gpu else ["cpu"]:
            kind = getattr(nvimgcodec.BackendKind, DECODER_BACKENDS[name])
            try:
                self.decoders[name] = nvimgcodec.Decoder(
                    backends=[nvimgcodec.Backend(kind)], **device
                )
            except RuntimeError as error:  # e.g. a GPU without a hardware JPEG decoder
                self.unavailable[name] = str(error)

    def backend(self, data: bytes) -> str:
        for name, decoder in self.decoders.items():
            try:
                if decoder.decode(data) is not None:
                    return name
            except RuntimeError:  # this backend cannot decode it: the next one is asked
                continue
        return "none"

    def count(self, paths: Sequence[Path]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for path in paths:
            name = self.backend(path.read_bytes())
            counts[name] = counts.get(name, 0) + 1
        return counts


def dali_decode(paths: Sequence[Path], on_gpu: bool, hw_decoder_load: float) -> list[np.ndarray]:
    """The JPEGs decoded by one DALI pipeline (``mixed`` on a GPU, else ``cpu``), as HWC uint8."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(paths), num_threads=2, device_id=0 if on_gpu else None,
                  prefetch_queue_depth=1)  # fmt: skip
    def decode():  # type: ignore[no-untyped-def]
        encoded, _ = fn.readers.file(files=[str(p) for p in paths])
        return fn.decoders.image(
            encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB,
            hw_decoder_load=hw_decoder_load,
        )  # fmt: skip

    pipe = decode()
    pipe.build()
    (images,) = pipe.run()
    images = images.as_cpu() if on_gpu else images
    return [np.array(images.at(i)) for i in range(len(paths))]


def part_decode(ctx: Context) -> dict[str, Any]:
    from PIL import Image

    from sslpipe.datasets.loaders import LoaderConfig

    paths = write_test_jpegs(ctx.folder / "decode")
    load = LoaderConfig(batch_size=1).hw_decoder_load  # the loaders' default share
    decoded = dali_decode(list(paths.values()), ctx.on_gpu, load)
    probe = BackendProbe(ctx.on_gpu)
    rows = []
    for (name, path), image in zip(paths.items(), decoded, strict=True):
        reference = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        same_shape = image.shape == reference.shape
        difference = np.abs(image.astype(np.int16) - reference).mean() if same_shape else None
        rows.append({
            "jpeg": name,
            "size": list(JPEG_CASES[name][:2]),
            "shape_ok": same_shape,
            "mean_abs_diff_vs_pil": None if difference is None else round(float(difference), 3),
            "backend": probe.backend(path.read_bytes()),
        })  # fmt: skip
    ok = all(r["shape_ok"] and r["mean_abs_diff_vs_pil"] < 2.0 for r in rows)
    result: dict[str, Any] = {"dali_device": "mixed" if ctx.on_gpu else "cpu",
                              "hw_decoder_load": load, "rows": rows, "ok": ok,
                              "backends_unavailable": probe.unavailable}  # fmt: skip
    if not ctx.on_gpu:
        result["skipped"] = "no CUDA GPU: decoded on the CPU, GPU backends not probed"
    return result


def part_nccl(ctx: Context) -> dict[str, Any]:
    import torch.distributed as dist

    backend = "nccl" if ctx.on_gpu else "gloo"
    store = dist.HashStore()
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    try:
        tensor = torch.full((1 << 20,), 2.0, device=ctx.device)
        start = time.perf_counter()
        dist.all_reduce(tensor)
        _synchronize(ctx.device)
        seconds = time.perf_counter() - start
        ok = bool((tensor == 2.0).all())
    finally:
        dist.destroy_process_group()
    result: dict[str, Any] = {"backend": backend, "ms": round(1000 * seconds, 2), "ok": ok}
    if ctx.on_gpu:
        result["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    else:
        result["skipped"] = "no CUDA GPU: NCCL not tried; one gloo all-reduce instead"
    return result


def part_memory(ctx: Context) -> dict[str, Any]:
    if not ctx.on_gpu:
        return {"skipped": "no CUDA GPU"}
    free, total = torch.cuda.mem_get_info(ctx.device)
    return {"free_gib": round(free / 2**30, 2), "total_gib": round(total / 2**30, 2),
            "others_hold_gib": round((total - free) / 2**30, 2)}  # fmt: skip


# -- setup and training -------------------------------------------------------------------------


def part_setup(ctx: Context) -> dict[str, Any]:
    """Shards of ImageNet-size JPEGs (``imagenet_like``, needs scikit-image), or of the project's
    synthetic 64 px shapes on a smoke run."""
    from sslpipe.datasets.ingest import ingest, split_shards
    from sslpipe.datasets.sources import ImageFolderSource, SyntheticShapesSource

    if ctx.sizes.smoke:
        source: Any = SyntheticShapesSource(ctx.sizes.images, image_size=64)
        ctx.jpegs = list(write_test_jpegs(ctx.folder / "probe").values())[:1]
    else:
        from imagenet_like import write_image_folder

        images = write_image_folder(ctx.folder / "images", ctx.sizes.images)
        source = ImageFolderSource(images)
        ctx.jpegs = sorted(images.rglob("*.jpg"))[:16]
    ingest(source, ctx.folder / "shards", shard_size=500, val_fraction=0)
    ctx.shards = split_shards(ctx.folder / "shards", "train")
    return {"images": ctx.sizes.images, "shards": len(ctx.shards)}


def _pretrain_config(
    ctx: Context, method: str, backbone: str, views: Any, batch: int, **fields: Any
) -> Any:
    """A one-worker pretrain stage, as the worker would get it."""
    from sslpipe.pipelines.stages.pretrain import PretrainConfig

    return PretrainConfig.model_validate(
        {
            "name": "pretrain", "type": "pretrain", "data": "data", "method": method,
            "backbone": backbone, "views": views, "global_batch_size": batch, "num_workers": 1,
            "use_gpu": ctx.on_gpu, "dali_threads": ctx.sizes.loader_threads, **fields,
        }
    )  # fmt: skip


# Loader preset → the method that trains with it here; on a smoke run, its views at 32 px
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


def _preset_config(ctx: Context, preset: str, batch: int, **fields: Any) -> Any:
    views = SMOKE_VIEWS[preset] if ctx.sizes.smoke else preset
    if preset == "vicreg":
        fields = {**_vicreg_fields(ctx.sizes.projector), **fields}
    return _pretrain_config(ctx, PRESET_METHOD[preset], ctx.sizes.backbone, views, batch, **fields)


def _loader(config: Any, shards: list[Path], threads: int, **settings: Any) -> Any:
    """The DALI loader a worker of ``config`` builds (on the GPU where there is one)."""
    from sslpipe.datasets.loaders import LoaderConfig, build_loader

    loader_config = LoaderConfig(
        batch_size=config.global_batch_size,
        num_threads=threads,
        with_index=config.card().needs_indices,
        **settings,
    )
    return build_loader("dali", shards, config.recipes(), loader_config), loader_config


class Training:
    """One process's training step, built as a worker builds it."""

    def __init__(self, config: Any, device: torch.device, num_samples: int) -> None:
        from sslpipe.pipelines.training.step import (
            build_scheduler,
            build_training_method,
            build_training_optimizer,
        )

        self.config, self.device = config, device
        self.method = build_training_method(config, num_samples, 1, device)
        self.optimizer = build_training_optimizer(config, self.method)
        self.scheduler = build_scheduler(config, self.optimizer, steps_per_epoch=RUN_STEPS)
        self.step = 0

    def run(self, batches: Iterator[Any], steps: int) -> tuple[float, list[float]]:
        """Seconds per step over ``steps`` steps of prepared ``(views, Batch)``, and the losses."""
        from sslpipe.pipelines.training.step import train_step
        from sslpipe.ssl_ops import Progress

        losses = []
        _synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            views, batch = next(batches)
            progress = Progress.at(self.step, RUN_STEPS, RUN_STEPS * self.config.epochs)
            output = train_step(
                self.method, self.method, views, batch, self.optimizer, self.scheduler,
                self.config, progress,
            )  # fmt: skip
            self.step += 1
            losses.append(output.losses["loss"].detach())
        _synchronize(self.device)
        seconds = (time.perf_counter() - start) / steps
        return seconds, [float(loss) for loss in losses]


def _prepared(loader: Any, device: torch.device, clock: Any) -> Iterator[Any]:
    """Epoch after epoch of ``loader``'s batches on ``device``, their wait timed by ``clock``."""
    from sslpipe.pipelines.training.batches import TimedLoader

    while True:
        yield from TimedLoader(loader, device, clock)


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 for float32 matmuls and convolutions inside the block (CUDA only)."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    if enabled:
        matmul.fp32_precision = conv.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def _step_row(ctx: Context, row: StepRow) -> dict[str, Any]:
    from sslpipe.ssl_ops import Batch
    from sslpipe.ssl_ops.catalog import BACKBONE_NAMES, METHODS

    precision = row.precision + "+tf32" * row.tf32
    described = {"name": row.name, "method": row.method, "backbone": row.backbone,
                 "batch_per_gpu": row.batch, "precision": precision}  # fmt: skip
    absent = [name for name, known in ((row.method, METHODS), (row.backbone, BACKBONE_NAMES))
              if name not in known]  # fmt: skip
    if absent:
        return {**described, "skipped": f"{', '.join(absent)} not in this build"}
    config = _pretrain_config(
        ctx, row.method, row.backbone, row.views, row.batch, precision=row.precision,
        **row.fields,
    )  # fmt: skip
    training = Training(config, ctx.device, ctx.sizes.images)
    views = [torch.randn(row.batch, 3, r.size, r.size, device=ctx.device) for r in config.recipes()]
    labels = torch.zeros(row.batch, dtype=torch.long, device=ctx.device)
    batches = itertools.repeat((views, Batch(labels)))
    with _tf32(row.tf32 and ctx.on_gpu):
        training.run(batches, ctx.sizes.warmup_steps)
        if ctx.on_gpu:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        seconds, losses = training.run(batches, ctx.sizes.timed_steps)
    return {
        **described,
        "ms_per_step": round(1000 * seconds, 2),
        "images_per_s_per_gpu": round(row.batch / seconds, 1),
        "peak_memory_gib": _peak_gib(ctx.device),
        "loss_finite": all(map(_finite, losses)),
    }


def part_step(ctx: Context) -> dict[str, Any]:
    rows = []
    for row in STEP_ROWS[ctx.sizes]:
        try:
            rows.append(_step_row(ctx, row))
        except Exception as error:  # one row's failure (out of memory…) is a result
            rows.append({"name": row.name, "batch_per_gpu": row.batch,
                         "error": f"{type(error).__name__}: {error}"})  # fmt: skip
        if ctx.on_gpu:
            torch.cuda.empty_cache()
    return {"rows": rows}


def part_covariance(ctx: Context) -> dict[str, Any]:
    from sslpipe.ssl_ops.vicreg import vicreg_loss

    n, d, device = ctx.sizes.covariance_batch, ctx.sizes.covariance_dim, ctx.device
    generator = torch.Generator(device="cpu").manual_seed(0)
    z = [torch.randn(n, d, generator=generator) for _ in range(2)]
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
        rows.append({
            "loss_precision": precision,
            "ms_forward_backward": round(1000 * (time.perf_counter() - start) / repeats, 3),
            "relative_error": abs(loss.item() - reference) / abs(reference),
        })  # fmt: skip
    return {"batch": n, "dim": d, "rows": rows}


# -- loader and data --------------------------------------------------------------------------


def _synchronised_sizes(loader: Any) -> Iterator[int]:
    """Batch sizes, each once its batch is ready on the consumer's stream (no device-wide sync,
    which would also wait for the batches DALI is making ahead)."""
    while True:
        for _, labels, *_ in loader:
            if labels.is_cuda:
                torch.cuda.current_stream().synchronize()
            yield len(labels)


def part_loader(ctx: Context) -> dict[str, Any]:
    from sslpipe.datasets.loader_bench import describe, time_batches

    sizes, spec_threads = ctx.sizes, ctx.sizes.loader_threads
    default_load = 0.65
    grid: list[tuple[str, int, str, float]] = []
    grid += [("vicreg", threads, "once", default_load) for threads in sizes.threads]
    grid += [("vicreg", spec_threads, "per_view", default_load)]
    grid += [("vicreg", spec_threads, "once", load) for load in sizes.hw_decoder_loads]
    grid += [(preset, spec_threads, "once", default_load) for preset in ("pirl", "multicrop")]
    rows = []
    for preset, threads, decode, load in dict.fromkeys(grid):
        config = _preset_config(ctx, preset, sizes.real_batch)
        loader, loader_config = _loader(
            config, ctx.shards, threads, decode=decode, hw_decoder_load=load
        )
        row = time_batches(_synchronised_sizes(loader), seconds=sizes.loader_seconds)
        described = describe(loader_config, backend="dali", views=len(config.recipes()))
        rows.append({"recipe": preset, **described, **row})
        del loader
    backends = BackendProbe(ctx.on_gpu).count(ctx.jpegs)
    return {"images": sizes.images, "jpeg_backends": backends, "rows": rows}


def part_data_bound(ctx: Context) -> dict[str, Any]:
    from sslpipe.pipelines.training.batches import DataWaitClock, ReplayLoader

    sizes = ctx.sizes
    config = _preset_config(ctx, "vicreg", sizes.real_batch)
    threads = config.dali_threads
    replay = ReplayLoader(_loader(config, ctx.shards, threads)[0], ctx.device)
    seconds: dict[str, float] = {}
    waited: dict[str, float] = {}
    for name, source in (
        ("replay_before", replay),
        ("real", _loader(config, ctx.shards, threads)[0]),
        ("replay_after", replay),
    ):
        training = Training(config, ctx.device, sizes.images)
        clock = DataWaitClock(ctx.device)
        batches = _prepared(source, ctx.device, clock)
        training.run(batches, sizes.warmup_steps)
        clock.take()
        seconds[name], _ = training.run(batches, sizes.timed_steps)
        waited[name] = clock.take() / (seconds[name] * sizes.timed_steps)
        del training, batches
    replayed = (seconds["replay_before"] + seconds["replay_after"]) / 2
    return {
        "batch_per_gpu": sizes.real_batch,
        "threads": threads,
        **{f"ms_per_step_{name}": round(1000 * value, 2) for name, value in seconds.items()},
        "replay_drift": round(abs(seconds["replay_after"] / seconds["replay_before"] - 1), 4),
        "data_bound_share": round(1 - replayed / seconds["real"], 4),
        "data_wait_share_real": round(waited["real"], 4),
        "data_wait_share_replay": round(max(waited["replay_before"], waited["replay_after"]), 4),
    }


def part_methods(ctx: Context) -> dict[str, Any]:
    from sslpipe.pipelines.training.batches import DataWaitClock

    rows = []
    for preset in ("pirl", "multicrop"):
        config = _preset_config(ctx, preset, ctx.sizes.real_batch)
        training = Training(config, ctx.device, ctx.sizes.images)
        loader, _ = _loader(config, ctx.shards, config.dali_threads)
        batches = _prepared(loader, ctx.device, DataWaitClock(ctx.device))
        seconds, losses = training.run(batches, ctx.sizes.warmup_steps + ctx.sizes.timed_steps)
        rows.append({
            "method": config.method,
            "views": preset,
            "batch_per_gpu": ctx.sizes.real_batch,
            "steps": len(losses),
            "ms_per_step_with_warmup": round(1000 * seconds, 2),
            "loss_finite": all(map(_finite, losses)),
            "last_loss": losses[-1],
        })  # fmt: skip
        del training, batches
    return {"rows": rows}


def part_probe(ctx: Context) -> dict[str, Any]:
    from sslpipe.datasets.recipes import get_recipe
    from sslpipe.pipelines.probe.features import measure_extraction
    from sslpipe.ssl_ops import build_backbone

    recipe = get_recipe("eval_cifar" if ctx.sizes.smoke else "eval")[0]
    rate = measure_extraction(
        ctx.shards,
        build_backbone(ctx.sizes.backbone),
        recipe=recipe,
        batch_size=ctx.sizes.real_batch,
        num_threads=ctx.sizes.loader_threads,
        use_gpu=ctx.on_gpu,
        seconds=ctx.sizes.probe_seconds,
    )
    return {"backbone": ctx.sizes.backbone, "images_per_s": round(rate, 1)}


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[Context], dict[str, Any]]
    budget_s: float  # the full check on one H100, by estimate
    preflight: bool = False
    needs_data: bool = False


PARTS = (
    Part("imports", part_imports, 12, preflight=True),
    Part("decode", part_decode, 10, preflight=True),
    Part("nccl", part_nccl, 6, preflight=True),
    Part("memory", part_memory, 2, preflight=True),
    Part("setup", part_setup, 45),
    Part("step", part_step, 90),
    Part("covariance", part_covariance, 15),
    Part("loader", part_loader, 95, needs_data=True),
    Part("data_bound", part_data_bound, 75, needs_data=True),
    Part("methods", part_methods, 40, needs_data=True),
    Part("probe", part_probe, 25, needs_data=True),
)
PART_NAMES = [part.name for part in PARTS]


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The targets, from the parts that ran."""
    checks: dict[str, Any] = {}
    for name in ("imports", "decode", "nccl"):
        if "ok" in results.get(name, {}):
            checks[f"preflight_{name}"] = {"met": results[name]["ok"]}
    loader = results.get("loader", {}).get("rows", [])
    vicreg = [r["images_per_s"] for r in loader if r["recipe"] == "vicreg"]
    if vicreg:
        checks["vicreg_images_per_s"] = {"best": max(vicreg), "target": TARGET_IMAGES_PER_S,
                                         "met": max(vicreg) >= TARGET_IMAGES_PER_S}  # fmt: skip
    if "data_bound_share" in results.get("data_bound", {}):
        share = results["data_bound"]["data_bound_share"]
        checks["data_bound_share"] = {"value": share, "target": TARGET_DATA_BOUND,
                                      "met": 0 <= share < TARGET_DATA_BOUND}  # fmt: skip
        if share < 0:
            checks["data_bound_share"]["flag"] = (
                "negative: the replays were slower than the real loader, so the noise exceeds "
                "the effect; see replay_drift and data_wait_share_real, and rerun the part"
            )
    for row in results.get("step", {}).get("rows", []):
        if "loss_finite" in row:
            checks[f"step_{row['name']}_{row['batch_per_gpu']}"] = {"met": row["loss_finite"]}
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


def _write(path: Path, results: dict[str, Any]) -> None:
    """Replace ``path`` at once: a run killed mid-write leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, path)


def _skip_reason(part: Part, ctx: Context, elapsed: float, deadline: float | None) -> str | None:
    if deadline is not None and elapsed + part.budget_s > deadline:
        return (f"would overrun --deadline-s {deadline:g}: {elapsed:.0f} s used, "
                f"budget {part.budget_s:g} s")  # fmt: skip
    if part.needs_data and not ctx.shards:
        return "no data set: setup did not run or failed"
    return None


def run_parts(parts: Sequence[Part], ctx: Context, out: Path, deadline: float | None) -> dict:
    began = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(ctx.device), "sizes": asdict(ctx.sizes),
                               "deadline_s": deadline,
                               "budgets_s": {p.name: p.budget_s for p in parts}}  # fmt: skip
    for part in parts:
        start = time.perf_counter()
        if reason := _skip_reason(part, ctx, start - began, deadline):
            results[part.name] = {"skipped": reason}
        else:
            try:
                results[part.name] = part.run(ctx)
            except Exception as error:  # one part's failure is a result; the rest still run
                results[part.name] = {"error": f"{type(error).__name__}: {error}",
                                      "traceback": traceback.format_exc()}  # fmt: skip
        results[part.name]["seconds"] = round(time.perf_counter() - start, 1)
        results["targets"] = targets(results)
        results["total_s"] = round(time.perf_counter() - began, 1)
        _write(out, results)
        print(f"[gpu_check] {part.name}: {json.dumps(results[part.name])[:400]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    parser.add_argument("--preflight", action="store_true", help="only the ≤ 30 s checks")
    parser.add_argument("--parts", help=f"comma-separated subset of {','.join(PART_NAMES)}")
    parser.add_argument("--deadline-s", type=float, help="skip the parts that would overrun it")
    args = parser.parse_args()
    wanted = set(args.parts.split(",") if args.parts else PART_NAMES)
    if unknown := sorted(wanted - set(PART_NAMES)):
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PART_NAMES)}")
    if any(p.needs_data for p in PARTS if p.name in wanted):
        wanted.add("setup")
    parts = [p for p in PARTS if p.name in wanted and (p.preflight or not args.preflight)]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:  # it checks the code, not the speed: no threads spinning against the loader's
        torch.set_num_threads(1)
    if device.type != "cuda" and not (args.smoke or args.preflight):
        print("gpu_check: no CUDA GPU here; --smoke runs every part at tiny sizes on the CPU, "
              "--preflight the checks that can run", file=sys.stderr)  # fmt: skip
        sys.exit(1)
    deadline = args.deadline_s
    if deadline is None and not args.smoke:
        deadline = PREFLIGHT_DEADLINE_S if args.preflight else FULL_DEADLINE_S
    plan = ", ".join(f"{p.name} {p.budget_s:g} s" for p in parts)
    print(f"[gpu_check] budgets on one H100: {plan}; total "
          f"{sum(p.budget_s for p in parts):g} s, deadline {deadline} s", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(SMOKE if args.smoke else FULL, device, Path(tmp))
        results = run_parts(parts, ctx, args.out, deadline)
    print(f"[gpu_check] {args.out}: {results['total_s']} s; targets {results['targets']}")


if __name__ == "__main__":
    main()
