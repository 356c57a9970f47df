"""What ``plan`` and ``run`` check before any stage starts: what the spec alone cannot tell
(``validate`` checks the spec alone, anywhere, so a spec written for a cluster validates on a
laptop).

- the workdir can be created and written, no other run holds it, and it is not another
  spec's (``run.json`` names the spec that last ran there);
- every stage's data is where the spec says, laid out as its ``kind`` says
  (``StageConfig.machine_problems``);
- the Ray cluster can hold what the stages about to run ask for
  (``StageConfig.resource_request``), instead of a Ray wait that never ends. ``plan`` starts
  no Ray for this: without ``RAY_ADDRESS`` it checks against the Ray that ``run`` would start
  on this machine (``local_capacity``), with it against the cluster there.

Each problem is one line at the spec line it concerns; exit 1 when the machine must change,
2 when the spec must.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import ENVIRONMENT_EXIT, SPEC_EXIT, Problem, SpecError
from ..spec.pipeline import PipelineSpec
from ..stages.base import ResourceRequest, StageConfig, folder_problem
from .ray_runtime import Capacity
from .store import RunStore


def workdir_problems(spec: PipelineSpec, *, create: bool) -> list[Problem]:
    """Whether ``spec.workdir`` can be created and written (with ``create`` it is created;
    either way a file is made and removed at once in it, or for ``plan`` in the nearest folder
    that exists), whether another live run holds it, and whether another spec ran there."""

    def problem(message: str) -> list[Problem]:
        return [spec.problem(("workdir",), message, ENVIRONMENT_EXIT)]

    workdir = Path(spec.workdir)
    if found := folder_problem(workdir, ("workdir",), "workdir"):
        return [spec.problem(found.field, found.message, found.exit_code)]
    existing = next(p for p in (workdir, *workdir.parents) if p.exists())
    try:
        if create:
            workdir.mkdir(parents=True, exist_ok=True)
            existing = workdir
        # A file made and removed at once: permissions alone miss read-only mounts.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return problem(f"{workdir} cannot be written: {error.strerror}")
    store = RunStore(workdir)
    if holder := store.lock_holder():
        running = ", ".join(holder.stages) or "none yet"
        return problem(
            f"{workdir} is in use by another run (pid {holder.pid}, since {holder.since}, "
            f"running: {running}); wait for it (sslpipe status {workdir}) or stop it "
            f"(kill -INT {holder.pid})"
        )
    owner = store.last_run().get("spec")
    if owner not in (None, spec.name):
        message = (
            f"{workdir} holds the runs of spec {owner!r}, not {spec.name!r}; give this spec a "
            f"workdir of its own, or rename it back to {owner!r} if it is the same pipeline"
        )
        return [spec.problem(("workdir",), message, SPEC_EXIT)]
    return []


def data_problems(spec: PipelineSpec) -> list[Problem]:
    """Every stage's ``machine_problems``, at the spec lines of their fields."""
    return [
        spec.problem(("stages", index, *found.field), found.message, found.exit_code)
        for index, stage in enumerate(spec.stages)
        for found in stage.machine_problems()
    ]


def resource_problems(
    spec: PipelineSpec, stages: Sequence[StageConfig], capacity: Capacity
) -> list[Problem]:
    """The requests of ``stages`` that ``capacity`` cannot ever place."""
    problems = []
    for stage in stages:
        request = stage.resource_request()
        if request is None:
            continue
        index = next(i for i, s in enumerate(spec.stages) if s.name == stage.name)
        for field, message in _unplaceable(request, capacity):
            problems.append(spec.problem(("stages", index, field), message, ENVIRONMENT_EXIT))
    return problems


def cpus_to_start_with(stages: Sequence[StageConfig]) -> int:
    """The logical CPUs an in-process Ray needs for the most demanding of ``stages`` (Ray on
    one machine starts with at least that many, see ``ray_runtime.ensure_ray``)."""
    needs = [0]
    for stage in stages:
        request = stage.resource_request()
        if request is not None:
            cpus = request.per_worker.get("CPU", 0)
            needs.append(math.ceil(cpus * (request.workers if request.gang else 1)))
    return max(needs)


def _unplaceable(request: ResourceRequest, capacity: Capacity) -> list[tuple[str, str]]:
    """``(stage field, message)`` for the first reason ``request`` cannot be placed."""
    wanted = {name: amount for name, amount in request.per_worker.items() if amount > 0}
    workers = request.fields.get("workers", "")
    where = "can grow to" if capacity.autoscaled else "has"
    for name, amount in wanted.items():
        field = request.fields.get(name, workers)
        have = capacity.total.get(name, 0.0)
        largest = max((node.get(name, 0.0) for node in capacity.nodes), default=0.0)
        if have == 0 and name == "GPU":
            hint = f"set {field}: false to run on CPUs, or run where Ray sees GPUs"
            return [(field, f"asks for GPUs, but the Ray cluster has none; {hint}")]
        if have == 0:
            return [(field, f"asks for {name}, but the Ray cluster has none")]
        if amount > largest:
            message = (
                f"each worker needs {amount:g} {name}, but the largest node {where} {largest:g}"
            )
            return [(field, message)]
        if request.gang and request.workers * amount > have:
            need = f"{request.workers} workers need {request.workers * amount:g} {name} at once"
            fit = math.floor(have / amount)
            return [
                (workers, f"{need}, but the Ray cluster {where} {have:g}; set {workers}: {fit}")
            ]
    if request.gang and not capacity.autoscaled:
        fit = sum(
            min(math.floor(node.get(name, 0.0) / amount) for name, amount in wanted.items())
            for node in capacity.nodes
        )
        if wanted and fit < request.workers:
            message = (
                f"{request.workers} workers of {_bundle(wanted)} each, but the Ray cluster's "
                f"nodes hold {fit} at once; set {workers}: {fit}"
            )
            return [(workers, message)]
    return []


def _bundle(resources: dict[str, float]) -> str:
    return " + ".join(f"{amount:g} {name}" for name, amount in resources.items())


def local_capacity(min_cpus: int = 0) -> Capacity:
    """What the Ray that a run starts on this machine (no ``RAY_ADDRESS``) will have, without
    starting it: ``ray_runtime.ensure_ray``'s logical CPUs, and the GPUs Ray would detect
    (``CUDA_VISIBLE_DEVICES`` when set, else the NVIDIA devices the kernel lists)."""
    cpus = float(max(os.cpu_count() or 1, min_cpus))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    else:
        gpus = len([p for p in Path("/dev").glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)])
    resources = {"CPU": cpus, **({"GPU": float(gpus)} if gpus else {})}
    return Capacity([resources], dict(resources))


def raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise SpecError(problems)
