"""Run a validated spec: stages in dependency order, skipping those that are up to date.

Before any stage starts, ``run`` and ``plan`` check what the spec alone cannot tell
(``preflight``): the workdir, every stage's data, and that the Ray cluster can hold what the
stages about to run ask for.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ..errors import UsageError, UserError, one_line
from ..spec.pipeline import PipelineSpec, execution_order
from ..stages import STAGE_TYPES, StageConfig, StageContext
from .interrupt import handle_stop_signals
from .preflight import (
    cpus_to_start_with,
    data_problems,
    local_capacity,
    raise_problems,
    resource_problems,
    workdir_problems,
)
from .ray_runtime import Capacity, cluster_capacity, shutdown_ray
from .store import STATE_FILE, RunStore, now


@dataclass(frozen=True)
class StageResult:
    """One stage after ``run`` (``ran``: it ran now; else it was up to date) or in a plan
    (``ran``: it would run, ``reason`` why)."""

    name: str
    type: str
    ran: bool
    reason: str | None
    dir: Path
    state: dict[str, Any] = field(default_factory=dict)
    on_ray: bool = False  # it asks the Ray cluster for resources when it runs

    @property
    def metrics(self) -> dict[str, Any]:
        return self.state.get("metrics", {})

    @property
    def outputs(self) -> list[Path]:
        """The stage type's headline files."""
        return [self.dir / name for name in STAGE_TYPES[self.type].outputs]

    @property
    def notes(self) -> list[str]:
        """What the stage wants seen in the summary (e.g. rejected inputs)."""
        return _notes(self.type, self.metrics, self.dir)


def _notes(stage_type: str, metrics: dict[str, Any], stage_dir: Path) -> list[str]:
    known = STAGE_TYPES.get(stage_type)
    return known.config.notes(metrics, stage_dir) if known else []


def fingerprint(stage: StageConfig, upstream: dict[str, str]) -> str:
    """Config, upstream fingerprints, input-data fingerprint and package version, hashed."""
    content = {
        "config": stage.model_dump(mode="json"),
        "upstream": upstream,
        "version": version("sslpipe"),
    }
    source_fingerprint = getattr(stage, "source_fingerprint", None)
    if source_fingerprint is not None:
        try:
            content["data"] = source_fingerprint()
        except ValueError as error:  # the data is not what the stage's settings say
            raise UsageError(f"stage {stage.name!r}: {error}") from None
        except OSError as error:
            raise UserError(f"stage {stage.name!r}: {one_line(error)}") from None
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def run_pipeline(
    spec: PipelineSpec, *, force: tuple[str, ...] = (), if_changed: bool = False
) -> list[StageResult]:
    """Run the stages that are not up to date; every stage's result, in execution order.

    With ``if_changed`` nothing runs unless some stage would (new data, a changed config, a
    failed or missing stage); either way the check, or why it failed, is appended to
    ``<workdir>/checks.jsonl``. SIGINT/SIGTERM stop the run (see ``interrupt.py``): the
    running stage is marked interrupted, Ray shut down and the lock released; the next run
    continues from there.
    """
    raise_problems(workdir_problems(spec, create=True))
    store = RunStore(Path(spec.workdir))
    store.lock()
    try:
        with handle_stop_signals():
            try:
                fingerprints, planned = _prepare(spec, store, force)
            except KeyboardInterrupt:
                raise KeyboardInterrupt("before any stage started") from None
            except Exception as error:
                if if_changed:  # the night failed before any stage: say so in the checks
                    store.record_check(spec.name, {}, error=one_line(error))
                raise
            if if_changed:
                store.record_check(spec.name, {s.name: why for s, _, why in planned if why})
                if not any(why for _, _, why in planned):
                    print(f"{spec.name}: nothing changed since the last successful run")
                    return _results(store, planned, ran=set())
            run = {"spec": spec.name, "sslpipe_version": version("sslpipe"), "started": now()}
            store.record_run(run)
            ran = _run_stages(spec, store, set(force), fingerprints)
    finally:
        shutdown_ray()
        store.unlock()
    results = _results(store, planned, ran)
    _print_summary(spec, results)
    return results


def _prepare(
    spec: PipelineSpec,
    store: RunStore,
    force: tuple[str, ...],
    capacity: Callable[[int], Capacity] = cluster_capacity,
) -> tuple[dict[str, str], list[tuple[StageConfig, str, str | None]]]:
    """Check the data, fingerprint every stage, plan, and check that the Ray cluster (as
    ``capacity`` sees it) can hold the stages that will run; raises before any stage starts."""
    raise_problems(data_problems(spec))
    fingerprints = stage_fingerprints(spec)  # once per run: ingest's reads its whole source
    planned = list(plan(spec, store, force, fingerprints))
    running = [stage for stage, _, why in planned if why]
    if any(stage.resource_request() for stage in running):
        raise_problems(resource_problems(spec, running, capacity(cpus_to_start_with(running))))
    return fingerprints, planned


def _results(
    store: RunStore,
    planned: list[tuple[StageConfig, str, str | None]],
    ran: set[str],
) -> list[StageResult]:
    return [
        StageResult(
            stage.name,
            stage.type,
            stage.name in ran,
            why,
            store.stage_dir(stage.name),
            store.state(stage.name) or {},
            stage.resource_request() is not None,
        )
        for stage, _, why in planned
    ]


def stage_fingerprints(spec: PipelineSpec) -> dict[str, str]:
    """Every stage's fingerprint, computed in execution order (upstream ones first)."""
    fingerprints: dict[str, str] = {}
    for stage in execution_order(spec):
        upstream = {ref: fingerprints[ref] for ref in stage.upstream().values()}
        fingerprints[stage.name] = fingerprint(stage, upstream)
    return fingerprints


def plan(
    spec: PipelineSpec,
    store: RunStore,
    force: set[str] | tuple[str, ...] = (),
    fingerprints: dict[str, str] | None = None,
) -> Iterator[tuple[StageConfig, str, str | None]]:
    """``(stage, fingerprint, why it runs or None)`` in execution order; a stage planned to
    run makes every stage downstream of it run too."""
    fingerprints = fingerprints or stage_fingerprints(spec)
    rerun: set[str] = set()
    for stage in execution_order(spec):
        fp = fingerprints[stage.name]
        reason = _why_run(stage, store.state(stage.name), fp, set(force), rerun)
        if reason is not None:
            rerun.add(stage.name)
        yield stage, fp, reason


def _run_stages(
    spec: PipelineSpec, store: RunStore, force: set[str], fingerprints: dict[str, str]
) -> set[str]:
    ran = set()
    for stage, fp, reason in plan(spec, store, force, fingerprints):
        if reason is None:
            print(f"[{stage.name}] up to date, skipped")
            continue
        print(f"[{stage.name}] running: {reason}", flush=True)
        _run_stage(stage, store, fp, stage.upstream())
        ran.add(stage.name)
    return ran


def plan_pipeline(spec: PipelineSpec, force: tuple[str, ...] = ()) -> list[StageResult]:
    """What ``run`` would do, stage by stage, after the same checks, without running, writing
    or locking anything, and without starting Ray: the stages' resources are checked against
    the cluster at ``RAY_ADDRESS``, else against the Ray a run would start here."""
    raise_problems(workdir_problems(spec, create=False))
    store = RunStore(Path(spec.workdir))
    if os.environ.get("RAY_ADDRESS"):
        try:
            _, planned = _prepare(spec, store, force)
        finally:
            shutdown_ray()
    else:
        _, planned = _prepare(spec, store, force, local_capacity)
    return _results(store, planned, ran=set())


def resources_checked_against() -> str:
    """Which Ray ``plan`` checked the stages' resources against."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return f"resources checked against the Ray cluster at RAY_ADDRESS={address}"
    gpus = local_capacity().total.get("GPU", 0)
    return (
        f"resources checked against the Ray a run starts on this machine ({gpus:g} GPUs; "
        "none started; set RAY_ADDRESS to check a cluster)"
    )


def print_plan(results: list[StageResult]) -> None:
    for result in results:
        reason = result.reason or "up to date"
        print(f"{result.name:<16} {'run ' if result.reason else 'skip'}  {reason}")
    if any(r.reason and r.on_ray for r in results):
        print(resources_checked_against())


def _shown(metrics: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    )


def print_status(workdir: Path) -> None:
    """A table of the stages recorded in ``workdir``, their notes, and the last
    ``--if-changed`` check when it failed."""
    store = RunStore(workdir)
    states = store.states()
    last_check = (store.checks() or [None])[-1]
    if not states and last_check is None:
        raise UserError(f"{workdir}: no stage has run here")
    stale = store.stale(states)
    print(f"{'stage':<16} {'status':<11} {'seconds':>8}  {'ended':<25} metrics / error")
    for name, state in states.items():
        detail = state.get("error") or _shown(state.get("metrics", {}))
        status = "stale" if name in stale else state.get("status", "?")
        if name in stale:
            detail = f"{stale[name]}; {detail}"
        print(
            f"{name:<16} {status:<11} {state.get('seconds', ''):>8}  "
            f"{state.get('ended', ''):<25} {detail}"
        )
        for note in _notes(state.get("type", ""), state.get("metrics", {}), store.stage_dir(name)):
            print(f"{'':<16} {note}")
    if last_check and last_check.get("error"):
        print(f"last --if-changed check {last_check['time']} failed: {last_check['error']}")


def _why_run(
    stage: StageConfig, state: dict | None, fp: str, force: set[str], rerun: set[str]
) -> str | None:
    """Why the stage must run (forced, upstream reran, never ran, failed, changed), or None."""
    if stage.name in force:
        return "forced"
    changed = [ref for ref in stage.upstream().values() if ref in rerun]
    if changed:
        return f"upstream {', '.join(changed)} reran"
    if state is None:
        return "never ran"
    if state.get("status") == "running":
        return "last run did not finish"
    if state.get("status") != "succeeded":
        return f"last run {state.get('status')}"
    if state.get("fingerprint") != fp:
        return "config or input changed"
    return None


def _run_stage(stage: StageConfig, store: RunStore, fp: str, upstream: dict[str, str]) -> None:
    previous = store.state(stage.name) or {}
    continues = stage.resumable and previous.get("fingerprint") == fp
    staging = store.begin(stage.name, keep=continues)
    context = StageContext(
        out_dir=staging,
        inputs={field: store.stage_dir(ref) for field, ref in upstream.items()},
        workdir=store.workdir,
        run_id=fp[:12],
    )
    state = {
        "status": "running",
        "fingerprint": fp,
        "type": stage.type,
        "started": now(),
        "config": stage.model_dump(mode="json"),
        "upstream": upstream,
    }
    store.record(stage.name, state)
    began = time.perf_counter()
    try:
        metrics = STAGE_TYPES[stage.type].runner()(stage, context)
    except KeyboardInterrupt as interrupt:
        store.record(stage.name, {**state, "status": "interrupted", "ended": now()})
        where = str(interrupt) or "stopped before it finished"
        raise KeyboardInterrupt(f"stage {stage.name!r} {where}") from None
    except BaseException as error:
        message = one_line(error)
        failed = {**state, "status": "failed", "ended": now(), "error": message}
        if not isinstance(error, UserError):  # a bug or a crash: keep its traceback
            failed["traceback"] = traceback.format_exc()
        store.record(stage.name, failed)
        if isinstance(error, UserError):
            raise
        where = store.stage_dir(stage.name) / STATE_FILE
        raise UserError(f"stage {stage.name!r} failed: {message} (traceback in {where})") from error
    state |= {
        "status": "succeeded",
        "ended": now(),
        "seconds": round(time.perf_counter() - began, 1),
        "metrics": metrics,
    }
    store.commit(stage.name, staging, state)
    print(f"[{stage.name}] done in {state['seconds']} s", flush=True)


def _print_summary(spec: PipelineSpec, results: list[StageResult]) -> None:
    ran = sum(result.ran for result in results)
    print(f"\n{spec.name}: all {len(results)} stages succeeded ({ran} ran now)")
    for result in results:
        seconds = result.state.get("seconds", 0)
        print(f"  {result.name:<10} {seconds:>7} s  {_shown(result.metrics)}")
        for line in [*map(str, result.outputs), *result.notes]:
            print(f"             {line}")
