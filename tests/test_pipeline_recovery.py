"""Stopping and crashing a real run, then continuing it: Ctrl-C during pretrain, a second run
on the same workdir, SIGKILL of the driver, a stale lock, a resumed pretrain that ends with
exactly the configured number of steps, Ctrl-C during probe, and nothing left half-written."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "specs" / "tiny.yaml"
TOTAL_STEPS = 3 * 6  # epochs × (192 training images / global batch 32)

pytestmark = pytest.mark.slow


class Run:
    """``sslpipe run`` in its own process group, its output collected in a file."""

    def __init__(self, workdir: Path, log: Path) -> None:
        self.log = log
        command = [sys.executable, "-m", "sslpipe.pipelines.cli", "run", str(TINY)]
        env = {**os.environ, "TINY_WORKDIR": str(workdir), "PYTHONUNBUFFERED": "1"}
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.process.poll() is None, f"exited before {text!r}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.output()}"
            time.sleep(0.2)

    def finish(self, timeout: float = 300) -> int:
        return self.process.wait(timeout=timeout)

    def kill_leftovers(self) -> None:
        """What a dead machine would take with it: whatever the driver started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _state(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / stage / "state.json").read_text())


def test_sigterm_second_run_sigkill_then_resume(tmp_path: Path, ray_cleanup) -> None:
    """The runs join the session's Ray head (``ray_cleanup``): a killed driver's Ray Train
    controller and workers die with it, as its actors; the quickstart test covers a driver
    that starts and stops Ray itself."""
    workdir = tmp_path / "runs"

    # 1. Ctrl-C mid-pretrain (SIGINT to the process group, as a terminal sends it; SIGTERM
    # is test_pretrain_pirl's): the workers checkpoint, the run stops cleanly.
    first = Run(workdir, tmp_path / "first.log")
    try:
        first.wait_for(f"step 4/{TOTAL_STEPS} ")
        os.killpg(first.process.pid, signal.SIGINT)
        assert first.finish(timeout=90) == 130, first.output()
    finally:
        first.kill_leftovers()
    assert "Traceback" not in first.output()
    assert (
        first.output()
        .strip()
        .splitlines()[-1]
        .startswith("interrupted by SIGINT: stage 'pretrain' stopped at step ")
    )
    assert (
        first.output().strip().endswith("(checkpoint kept); the same command continues from here")
    )
    assert _state(workdir, "pretrain")["status"] == "interrupted"
    assert _state(workdir, "ingest")["status"] == "succeeded"
    assert not (workdir / ".lock").exists()
    assert list(workdir.glob("_ray/pretrain-*/checkpoint_*"))

    # 2. Resume; while it trains, another run on the same workdir is refused.
    second = Run(workdir, tmp_path / "second.log")
    try:
        second.wait_for("[pretrain] resumed from step")
        rival = subprocess.run(
            [sys.executable, "-m", "sslpipe.pipelines.cli", "run", str(TINY)],
            cwd=REPO,
            env={**os.environ, "TINY_WORKDIR": str(workdir)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rival.returncode == 1
        pid = second.process.pid
        assert rival.stderr.strip().startswith(
            f"{TINY}:4:1: workdir: {workdir} is in use by another run (pid {pid}, since "
        )
        assert rival.stderr.strip().endswith(
            f", running: pretrain); wait for it (sslpipe status {workdir}) or stop it "
            f"(kill -INT {pid})"
        )
        # 3. SIGKILL of the driver after one more checkpoint: no chance to clean up.
        resumed_at = int(second.output().split("resumed from step ")[1].split("/")[0])
        second.wait_for(f"step {resumed_at + 3}/{TOTAL_STEPS} ")
        second.process.send_signal(signal.SIGKILL)
        second.finish(timeout=30)
    finally:
        second.kill_leftovers()
    assert (workdir / ".lock").exists()

    # 4. The same command again: takes the stale lock over, resumes; Ctrl-C during probe.
    third = Run(workdir, tmp_path / "third.log")
    try:
        third.wait_for("[probe] running")
        os.killpg(third.process.pid, signal.SIGINT)
        assert third.finish() == 130, third.output()
    finally:
        third.kill_leftovers()
    output = third.output()
    assert f"taking over a stale lock on {workdir} (pid {second.process.pid} is gone)" in output
    assert "[ingest] up to date, skipped" in output
    assert "[pretrain] running: last run did not finish" in output
    assert "[pretrain] resumed from step" in output
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == (
        "interrupted by SIGINT: stage 'probe' stopped before it finished; "
        "the same command continues from here"
    )
    assert _state(workdir, "probe")["status"] == "interrupted"

    # 5. Once more: probe and export only.
    fourth = Run(workdir, tmp_path / "fourth.log")
    try:
        assert fourth.finish() == 0, fourth.output()
    finally:
        fourth.kill_leftovers()
    assert "[pretrain] up to date, skipped" in fourth.output()
    assert "[probe] running: last run interrupted" in fourth.output()
    history = [json.loads(line) for line in (workdir / "pretrain/history.jsonl").open()]
    assert [h["step"] for h in history] == list(range(1, TOTAL_STEPS + 1))
    assert _state(workdir, "pretrain")["metrics"]["step"] == TOTAL_STEPS
    for stage in ("ingest", "pretrain", "probe", "export"):
        assert _state(workdir, stage)["status"] == "succeeded"
    assert not any((workdir / ".staging").iterdir())
    assert not (workdir / ".lock").exists()
