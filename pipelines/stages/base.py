"""What every stage type shares: its config base class, the context it runs in, and the two
hooks that ``plan`` and ``run`` call before any stage starts (``machine_problems``,
``resource_request``)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ENVIRONMENT_EXIT

FieldPath = tuple[str | int, ...]
SpecMistake = tuple[FieldPath, str]  # a key path inside a stage, and what is wrong there

# Magnitudes past these are typing mistakes, not runs (docs/settings.md lists each bound): an
# ImageNet run is 100-1000 epochs at batches up to 64k on at most a few hundred GPUs.
MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 20
MAX_WORKERS = 4096
MAX_THREADS = 256
MAX_LR = 10.0


@dataclass(frozen=True)
class MachineProblem:
    """Something on this machine that would stop a stage: data that is not there, or not laid
    out as its ``kind`` says.

    ``field`` is the key path inside the stage (``("source", "path")``), so the message points
    at the spec line; ``exit_code`` is 2 when the spec must change (a flat folder given as
    ``image_folder``), 1 when the machine must (a path that is not mounted).
    """

    field: FieldPath
    message: str
    exit_code: int = ENVIRONMENT_EXIT


def folder_problem(path: Path, field: FieldPath, what: str) -> MachineProblem | None:
    """Why the folder ``path`` (the ``what`` of the spec: "workdir", "storage_path", …) cannot
    be created and written, looking only: a file in the way, or a parent that is not
    writable."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        blocker = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        return MachineProblem(field, f"{path} {blocker}; remove it or choose another {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        return MachineProblem(field, f"{existing} is not writable, so {what} {path} cannot be")
    return None


@dataclass(frozen=True)
class ResourceRequest:
    """The Ray resources a stage asks for while it runs.

    ``workers`` bundles of ``per_worker`` (Ray resource names → amounts, e.g.
    ``{"CPU": 3, "GPU": 1}``), each bundle on one node. ``gang``: every bundle at once (a Ray
    Train worker group waits until all fit); otherwise Ray tasks, which queue, so only one
    bundle has to fit. ``fields`` names the stage fields behind the request, for the message
    when it does not fit: ``"workers"`` and each resource name → field (``{"workers":
    "num_workers", "GPU": "use_gpu", "CPU": "dali_threads"}``).
    """

    workers: int
    per_worker: dict[str, float]
    gang: bool = True
    fields: dict[str, str] = field(default_factory=dict)


class StageConfig(BaseModel):
    """Base of every stage's spec entry.

    ``inputs`` maps a field holding an upstream stage name to the stage type it must name;
    the pipeline checks those references and orders the stages by them.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    inputs: ClassVar[dict[str, str]] = {}
    # Whether an interrupted attempt's staging folder is kept for the next one (same
    # fingerprint): the stage's run continues the work it finds there.
    resumable: ClassVar[bool] = False

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="stage name and folder name")

    def upstream(self) -> dict[str, str]:
        """Field name → upstream stage name, for the references that are set."""
        return {f: getattr(self, f) for f in self.inputs if getattr(self, f) is not None}

    def reference_problems(self, stages: Mapping[str, StageConfig]) -> list[SpecMistake]:
        """What this stage reads of another (``stages``: every stage by name) that the other
        does not provide, e.g. a metric its probe stage does not write. ``validate`` asks every
        stage once the spec is valid otherwise; it must not look at the machine."""
        return []

    def machine_problems(self) -> list[MachineProblem]:
        """What would stop this stage on this machine before it does any work (its data paths
        and their layout). ``plan`` and ``run`` ask every stage before any stage runs, never
        ``validate``; it must be quick: look, do not read the data."""
        return []

    def resource_request(self) -> ResourceRequest | None:
        """The Ray resources this stage needs while it runs, or None when it runs in the
        driver alone. ``plan`` and ``run`` check, for the stages about to run, that the Ray
        cluster has them (or its autoscaler can add them) before any stage starts."""
        return None

    @classmethod
    def notes(cls, metrics: dict[str, Any], stage_dir: Path) -> list[str]:
        """Lines the run summary and ``status`` print under this stage (e.g. rejected inputs
        and where their reasons are), from its recorded metrics."""
        return []


# Torch threads of a pretrain worker or probe task: the one CPU it reserves beside its loader's.
# Ray would give torch every reserved CPU (OMP_NUM_THREADS), so that torch and the loader
# threads oversubscribe the cores (two quickstarts side by side on 2 cores: probe and export
# 140 s instead of 50 s; README, "Resources").
WORKER_COMPUTE_THREADS = 1


class ShardReaderConfig(StageConfig):
    """Base of the stages that read shards on Ray workers (pretrain, probe): the loader fields;
    ``datasets/loaders.py`` has the loaders. README "Loaders" says when to pick which."""

    loader: Literal["dali", "torch"] = Field(
        "dali",
        description="dali: decode and views on the GPU with use_gpu, DALI's CPU graph without; "
        "torch: PIL + torchvision v2 in DataLoader processes, no DALI needed",
    )
    dali_threads: int = Field(
        2,
        gt=0,
        le=MAX_THREADS,
        description="loader threads (dali) or DataLoader processes (torch) per worker; a worker "
        "reserves this + 1 CPUs",
    )
    gang: ClassVar[bool]  # the workers start together (Ray Train) or queue (Ray tasks)
    loader_prefetch: int | None = Field(
        None,
        gt=0,
        le=64,
        description="batches each loader prepares ahead; default 3 with a GPU, 2 without",
    )
    memory_map: bool | None = Field(
        None,
        description="memory-map the shards; default: yes unless they are on a network "
        "filesystem (NFS, Lustre, FUSE…, found from the worker's mount table)",
    )

    def cpus_per_worker(self) -> int:
        """The loader's threads and the worker's own (``WORKER_COMPUTE_THREADS``)."""
        return self.dali_threads + WORKER_COMPUTE_THREADS

    def resource_request(self) -> ResourceRequest:
        """``num_workers`` bundles of the loader's CPUs, and a GPU each with ``use_gpu``;
        ``gang`` (each stage's): all at once, or queued one by one."""
        fields = {"workers": "num_workers", "GPU": "use_gpu", "CPU": "dali_threads"}
        gpu = {"GPU": 1} if self.use_gpu else {}
        per_worker = {"CPU": self.cpus_per_worker(), **gpu}
        return ResourceRequest(self.num_workers, per_worker, self.gang, fields)


@dataclass
class StageContext:
    """Where a stage writes (``out_dir``, renamed into place on success) and what it reads."""

    out_dir: Path
    inputs: dict[str, Path]
    workdir: Path
    run_id: str


StageRun = Callable[[Any, StageContext], dict[str, Any]]


@dataclass(frozen=True)
class StageType:
    """A stage type: its config model and its run function.

    Built-in stages name their run function as ``"module:function"``, imported only when the
    stage runs, so that reading and validating a spec never imports torch, Ray or DALI.
    """

    config: type[StageConfig]
    run: str | StageRun
    outputs: tuple[str, ...] = ()  # the headline files, shown in the run summary

    def runner(self) -> StageRun:
        if callable(self.run):
            return self.run
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)
