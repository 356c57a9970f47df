"""A workdir on disk: one folder per stage, its ``state.json``, atomic commits and a run lock.

A stage writes into ``<workdir>/.staging/<stage>/``; only when it succeeds is that folder
renamed to ``<workdir>/<stage>/``, so a crash never leaves half-written outputs under the
final name.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import UsageError, UserError

STATE_FILE = "state.json"
CHECKS_FILE = "checks.jsonl"
RUN_FILE = "run.json"  # the latest run: spec name, sslpipe version, start time


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LockHolder:
    pid: int
    since: str  # when it took the lock (ISO 8601, UTC)
    stages: list[str]  # the stages it is running now


class RunStore:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self._lock = self.workdir / ".lock"

    def stage_dir(self, name: str) -> Path:
        return self.workdir / name

    def state(self, name: str) -> dict[str, Any] | None:
        return _read_json(self.stage_dir(name) / STATE_FILE, f"delete {self.stage_dir(name)}")

    def states(self) -> dict[str, dict[str, Any]]:
        """Every recorded stage's latest attempt, in pipeline order (upstream first, as
        recorded; else in the order they started); a workdir that is not there is an argument
        mistake (``status``, ``report``)."""
        if not self.workdir.is_dir():
            raise UsageError(f"{self.workdir} is not a folder: give the spec's workdir")
        states = {
            p.parent.name: self.state(p.parent.name) or {}
            for p in self.workdir.glob(f"*/{STATE_FILE}")
        }
        pending = sorted(
            states, key=lambda n: (states[n].get("started", ""), states[n].get("ended", ""), n)
        )
        ordered: dict[str, dict[str, Any]] = {}
        while pending:
            ready = next(
                (n for n in pending if not set(_upstream(states[n])) & set(pending)),
                pending[0],  # a cycle cannot be recorded, but never loop
            )
            pending.remove(ready)
            ordered[ready] = states[ready]
        return ordered

    @staticmethod
    def stale(states: dict[str, dict[str, Any]]) -> dict[str, str]:
        """Stage → why its succeeded result is out of date: an upstream stage was attempted
        again after it (and did not succeed, or succeeded with new outputs), directly or not.
        ``states`` in pipeline order, as ``states()`` gives them."""
        stale: dict[str, str] = {}
        for name, state in states.items():
            for ref in _upstream(state):
                upstream = states.get(ref)
                if upstream is None or state.get("status") != "succeeded":
                    continue
                if ref in stale:
                    stale[name] = f"{ref} is stale"
                elif upstream.get("started", "") > state.get("started", ""):
                    stale[name] = f"from before {ref}'s latest attempt ({upstream.get('status')})"
        return stale

    def begin(self, name: str, *, keep: bool = False) -> Path:
        """The staging folder for the stage's outputs: empty, or with ``keep`` as the stage's
        interrupted attempt left it (a stage that continues its own work, e.g. ingest)."""
        staging = self.workdir / ".staging" / name
        if not keep:
            shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)
        return staging

    def commit(self, name: str, staging: Path, state: dict[str, Any]) -> None:
        """Publish the staging folder as the stage's outputs, replacing the previous ones, with
        the permissions the user's umask gives new files and folders: a library that writes
        through a private temporary file (safetensors: 0600) must not hide one output from the
        serving job or the other users of shared storage."""
        _write_json(staging / STATE_FILE, state)
        umask_permissions(staging)
        final = self.stage_dir(name)
        retired = self.workdir / ".staging" / f"{name}.old"
        shutil.rmtree(retired, ignore_errors=True)
        if final.exists():
            os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired, ignore_errors=True)

    def record(self, name: str, state: dict[str, Any]) -> None:
        """Record a stage as running, failed or interrupted; its previous outputs (if any)
        stay but are not up to date any more."""
        final = self.stage_dir(name)
        final.mkdir(parents=True, exist_ok=True)
        _write_json(final / STATE_FILE, state)

    def record_check(
        self, spec_name: str, changes: dict[str, str], error: str | None = None
    ) -> None:
        """Append one ``--if-changed`` check to ``checks.jsonl``: what changed, if anything,
        or the error that stopped the check (the night failed before any stage ran)."""
        record: dict[str, Any] = {"time": now(), "spec": spec_name, "changed": changes}
        if error is not None:
            record["error"] = error
        with open(self.workdir / CHECKS_FILE, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def checks(self) -> list[dict[str, Any]]:
        """The ``--if-changed`` checks, oldest first (a line cut short by a crash skipped)."""
        path = self.workdir / CHECKS_FILE
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def record_run(self, record: dict[str, Any]) -> None:
        """What the latest run was (``run.json``: spec name, version, start), for reports."""
        _write_json(self.workdir / RUN_FILE, record)

    def last_run(self) -> dict[str, Any]:
        return _read_json(self.workdir / RUN_FILE, "it is rewritten by the next run") or {}

    def lock_holder(self) -> LockHolder | None:
        """The live run that holds the workdir's lock, if one does: its pid, since when and
        the stages it is running."""
        try:
            pid = int(self._lock.read_text().strip() or 0)
            since = datetime.fromtimestamp(self._lock.stat().st_mtime, timezone.utc)
        except (OSError, ValueError):
            return None
        if not pid or not _pid_alive(pid):
            return None
        running = [n for n, state in self.states().items() if state.get("status") == "running"]
        return LockHolder(pid, since.isoformat(timespec="seconds"), running)

    def lock(self) -> None:
        """Take the workdir's run lock, taking over a lock left by a dead process."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = int(self._lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    holder = 0
                if holder and _pid_alive(holder):
                    raise UserError(
                        f"{self.workdir} is in use by another run (pid {holder}); "
                        "wait for it or stop it"
                    ) from None
                print(f"taking over a stale lock on {self.workdir} (pid {holder} is gone)")
                self._lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return

    def unlock(self) -> None:
        self._lock.unlink(missing_ok=True)


def umask_permissions(folder: Path) -> None:
    """Give ``folder`` and everything in it the permissions the user's umask gives new files
    and folders (links left alone)."""
    umask = os.umask(0)
    os.umask(umask)
    for root, folders, files in os.walk(folder):
        for names, mode in ((folders, 0o777 & ~umask), (files, 0o666 & ~umask)):
            for path in (os.path.join(root, name) for name in names):
                if not os.path.islink(path):  # a link's target is not the stage's output
                    os.chmod(path, mode)
    os.chmod(folder, 0o777 & ~umask)


def _upstream(state: dict[str, Any]) -> list[str]:
    """The stages a recorded attempt read (``runner`` records them as ``upstream``)."""
    return list(state.get("upstream", {}).values())


def _read_json(path: Path, fix: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, None when there is no file; a damaged file is one line."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is damaged ({error}); {fix}") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
