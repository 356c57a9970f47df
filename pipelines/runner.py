"""Run a validated spec: stages in dependency order, skipping those that are up to date."""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

from .errors import UserError
from .interrupt import handle_stop_signals
from .ray_runtime import shutdown_ray
from .run_store import RunStore, now
from .spec import PipelineSpec, execution_order
from .stages import STAGE_TYPES, StageConfig, StageContext


def fingerprint(stage: StageConfig, upstream: dict[str, str]) -> str:
    """Config, upstream fingerprints, input-data fingerprint and package version, hashed."""
    content = {
        "config": stage.model_dump(mode="json"),
        "upstream": upstream,
        "version": version("sslpipe"),
    }
    source_fingerprint = getattr(stage, "source_fingerprint", None)
    if source_fingerprint is not None:
        content["data"] = source_fingerprint()
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def run_pipeline(
    spec: PipelineSpec, *, force: tuple[str, ...] = (), if_changed: bool = False
) -> None:
    """Run the stages that are not up to date.

    With ``if_changed`` nothing runs unless some stage would (new data, a changed config, a
    failed or missing stage); either way the check is appended to ``<workdir>/checks.jsonl``.
    SIGINT/SIGTERM stop the run (see ``interrupt.py``): the running stage is marked
    interrupted, Ray shut down and the lock released; the next run continues from there.
    """
    unknown = [name for name in force if name not in {s.name for s in spec.stages}]
    if unknown:
        raise UserError(f"--force names no stage of this spec: {', '.join(unknown)}")
    store = RunStore(Path(spec.workdir))
    store.lock()
    try:
        with handle_stop_signals():
            # Once per run: an ingest stage's fingerprint reads its whole source.
            fingerprints = stage_fingerprints(spec)
            if if_changed:
                planned = plan(spec, store, force, fingerprints)
                changes = {s.name: why for s, _, why in planned if why}
                store.record_check(spec.name, changes)
                if not changes:
                    print(f"{spec.name}: nothing changed since the last successful run")
                    return
            _run_stages(spec, store, set(force), fingerprints)
    finally:
        shutdown_ray()
        store.unlock()
    _print_summary(spec, store)


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
    """``(stage, fingerprint, why it runs or None)`` in execution order.

    Lazy: a caller that runs each stage before asking for the next sees the store as it is
    then; a stage planned to run makes every stage downstream of it run too.
    """
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
) -> None:
    for stage, fp, reason in plan(spec, store, force, fingerprints):
        if reason is None:
            print(f"[{stage.name}] up to date, skipped")
            continue
        print(f"[{stage.name}] running: {reason}", flush=True)
        _run_stage(stage, store, fp, stage.upstream())


def print_plan(spec: PipelineSpec, force: tuple[str, ...] = ()) -> None:
    """What ``run`` would do, stage by stage, without running or locking anything."""
    for stage, _, reason in plan(spec, RunStore(Path(spec.workdir)), force):
        print(f"{stage.name:<16} {'run ' if reason else 'skip'}  {reason or 'up to date'}")


def print_status(workdir: Path) -> None:
    """A table of the stages recorded in ``workdir``."""
    print(f"{'stage':<16} {'status':<11} {'seconds':>8}  {'ended':<25} metrics / error")
    for name, state in RunStore(workdir).states().items():
        metrics = state.get("metrics", {})
        detail = state.get("error") or ", ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)
        )
        print(
            f"{name:<16} {state.get('status', '?'):<11} {state.get('seconds', ''):>8}  "
            f"{state.get('ended', ''):<25} {detail}"
        )


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
    staging = store.begin(stage.name)
    context = StageContext(
        out_dir=staging,
        inputs={field: store.stage_dir(ref) for field, ref in upstream.items()},
        workdir=store.workdir,
        run_id=fp[:12],
    )
    state = {"status": "running", "fingerprint": fp, "type": stage.type, "started": now()}
    store.record(stage.name, state)
    began = time.perf_counter()
    try:
        metrics = STAGE_TYPES[stage.type].run(stage, context)
    except KeyboardInterrupt:
        store.record(stage.name, {**state, "status": "interrupted", "ended": now()})
        raise
    except BaseException as error:
        failed = {**state, "status": "failed", "ended": now(), "error": f"{error}"}
        store.record(stage.name, failed)
        if isinstance(error, UserError):
            raise
        traceback.print_exc()
        raise UserError(f"stage {stage.name!r} failed: {type(error).__name__}: {error}") from None
    state |= {
        "status": "succeeded",
        "ended": now(),
        "seconds": round(time.perf_counter() - began, 1),
        "metrics": metrics,
    }
    store.commit(stage.name, staging, state)
    print(f"[{stage.name}] done in {state['seconds']} s", flush=True)


def _print_summary(spec: PipelineSpec, store: RunStore) -> None:
    print(f"\n{spec.name}: all {len(spec.stages)} stages succeeded")
    for stage in execution_order(spec):
        state = store.state(stage.name) or {}
        metrics = state.get("metrics", {})
        shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        print(f"  {stage.name:<10} {state.get('seconds', 0):>7} s  {shown}")
        for output in STAGE_TYPES[stage.type].outputs:
            print(f"             {store.stage_dir(stage.name) / output}")
