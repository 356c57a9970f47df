"""The runner's caching: skip what is up to date, rerun what changed, --force and downstream;
Ctrl-C and SIGTERM at every point before Ray."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sslpipe.pipelines.models.registry import ModelRegistry
from sslpipe.pipelines.run.runner import run_pipeline
from sslpipe.pipelines.run.store import RunStore
from sslpipe.pipelines.spec.pipeline import PipelineSpec


def _spec(workdir: Path, num_images: int) -> PipelineSpec:
    source = {"kind": "synthetic", "num_images": num_images, "image_size": 16}
    return PipelineSpec.model_validate(
        {
            "name": "cache",
            "workdir": str(workdir),
            "stages": [
                {"name": "a", "type": "ingest", "source": source, "val_fraction": 0.5},
                {"name": "b", "type": "ingest", "source": source, "val_fraction": 0.25},
            ],
        }
    )


def _started(workdir: Path) -> dict[str, str]:
    return {s: json.loads((workdir / s / "state.json").read_text())["started"] for s in "ab"}


def test_skip_rerun_on_change_and_force(tmp_path: Path, capsys) -> None:
    run_pipeline(_spec(tmp_path, 20))
    first = (tmp_path / "a" / "manifest.json").read_text()
    run_pipeline(_spec(tmp_path, 20))
    assert capsys.readouterr().out.count("up to date, skipped") == 2
    run_pipeline(_spec(tmp_path, 30))
    out = capsys.readouterr().out
    assert "[a] running: config or input changed" in out
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["num_samples"] == 30
    assert first != (tmp_path / "a" / "manifest.json").read_text()
    run_pipeline(_spec(tmp_path, 30), force=("b",))
    out = capsys.readouterr().out
    assert "[a] up to date, skipped" in out and "[b] running: forced" in out
    assert not (tmp_path / ".lock").exists()


def test_plan_and_status_commands(tmp_path: Path, capsys) -> None:
    import yaml

    from sslpipe.pipelines.cli.main import main

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(_spec(tmp_path / "runs", 20).model_dump(mode="json")))
    assert main(["plan", str(spec)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["a", "run"], ["b", "run"]]
    assert not (tmp_path / "runs" / "a").exists(), "plan must not run anything"
    assert main(["status", str(tmp_path / "runs")]) == 2
    assert "runs is not a folder: give the spec's workdir" in capsys.readouterr().err
    (tmp_path / "runs").mkdir()
    assert main(["status", str(tmp_path / "runs")]) == 1
    assert "no stage has run here" in capsys.readouterr().err
    assert main(["run", str(spec)]) == 0
    capsys.readouterr()
    assert main(["plan", str(spec), "--force", "a"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["a", "run", "forced"]
    assert out[1].split()[:2] == ["b", "skip"]  # b does not read a
    assert main(["status", str(tmp_path / "runs")]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[:2] for row in rows] == [["a", "succeeded"], ["b", "succeeded"]]


class _Command:
    """``sslpipe ARGS`` in its own process group, as a terminal runs it: Ctrl-C is SIGINT to
    the whole group (the ingest workers too), ``stop`` sends it or SIGTERM there."""

    def __init__(self, *args: str | Path) -> None:
        command = [sys.executable, "-m", "sslpipe.pipelines.cli", *map(str, args)]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.process = subprocess.Popen(
            command, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip

    def stop(self, when: Callable[[], bool], sig: signal.Signals = signal.SIGINT) -> str:
        deadline = time.monotonic() + 60
        while not when():
            assert self.process.poll() is None, self.process.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(self.process.pid, sig)
        return self.finish(130)

    def finish(self, code: int) -> str:
        try:
            out, _ = self.process.communicate(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        assert self.process.returncode == code, out
        assert "Traceback" not in out, out
        return out


class _Writer:
    """The writing end of a named pipe, opened once a reader waits on it and kept open (the
    reader blocks until it is closed); called: whether a reader waits now."""

    def __init__(self, fifo: Path) -> None:
        self.fifo, self.fds = fifo, []

    def __call__(self) -> bool:
        try:
            self.fds.append(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader yet
            return False
        return True

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)


def test_ctrl_c_and_sigterm_stop_cleanly_and_the_next_run_continues(tmp_path: Path) -> None:
    """Before any stage (the data check reads a pipe that never answers), while validate
    reads such a spec, and during ingest's worker processes; no Ray here (the pretrain and
    probe stops are in ``test_pipeline_recovery``)."""
    fifo = tmp_path / "list.csv"
    os.mkfifo(fifo)
    blocked = tmp_path / "blocked.yaml"
    blocked.write_text(
        f"name: c\nworkdir: {tmp_path / 'blocked'}\nstages:\n  - name: ingest\n    type: ingest\n"
        f"    source: {{kind: file_list, path: {fifo}}}\n"
    )
    with _Writer(fifo) as reading:
        for sig in (signal.SIGINT, signal.SIGTERM):
            out = _Command("run", blocked).stop(reading, sig)
            assert out.strip().splitlines()[-1] == (
                f"interrupted by {sig.name}: before any stage started; "
                "the same command continues from here"
            )
        assert not (tmp_path / "blocked" / "ingest").exists()
        out = _Command("validate", fifo).stop(reading)
        assert out.strip() == "interrupted by SIGINT; nothing was changed"

    spec = tmp_path / "spec.yaml"
    source = "{kind: synthetic, num_images: 800, image_size: 16}"
    spec.write_text(
        f"name: c\nworkdir: {tmp_path / 'runs'}\nstages:\n  - name: ingest\n    type: ingest\n"
        f"    source: {source}\n    shard_size: 20\n    workers: 2\n"
    )
    journal = tmp_path / "runs" / ".staging" / "ingest" / ".partial" / "journal.jsonl"
    out = _Command("run", spec).stop(
        lambda: journal.exists() and len(journal.read_text().splitlines()) > 2
    )
    assert out.strip().splitlines()[-1] == (
        "interrupted by SIGINT: stage 'ingest' stopped before it finished; "
        "the same command continues from here"
    )
    state = json.loads((tmp_path / "runs" / "ingest" / "state.json").read_text())
    assert state["status"] == "interrupted"
    assert not (tmp_path / "runs" / ".lock").exists()
    out = _Command("run", spec).finish(0)
    assert "[ingest] running: last run interrupted" in out
    assert re.search(r"\[ingest\] resumed from image [1-9]\d* of 800 \(\d+ finished", out), out


def _record(workdir: Path, name: str, status: str, started: str, **upstream: str) -> None:
    state = {"status": status, "type": name, "started": started, "upstream": upstream}
    (workdir / name).mkdir(parents=True, exist_ok=True)
    (workdir / name / "state.json").write_text(json.dumps(state))


def test_status_and_report_show_latest_attempts_in_pipeline_order(tmp_path: Path, capsys) -> None:
    """After a failed rerun of pretrain, the probe and export it fed are stale, and pretrain
    is listed where it stands in the pipeline, not where it started."""
    from sslpipe.pipelines.cli.main import main

    _record(tmp_path, "ingest", "succeeded", "2026-01-01T00:00:00")
    _record(tmp_path, "probe", "succeeded", "2026-01-01T00:02:00", model="pretrain", data="ingest")
    _record(tmp_path, "export", "succeeded", "2026-01-01T00:03:00", model="pretrain", probe="probe")
    _record(tmp_path, "pretrain", "failed", "2026-01-02T00:00:00", data="ingest")
    (tmp_path / "probe" / "metrics.json").write_text('{"top1": 50.0, "linear": {"top1": 50.0}}')
    assert main(["status", str(tmp_path)]) == 0
    rows = [line.split(None, 2) for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[:2] for row in rows] == [
        ["ingest", "succeeded"], ["pretrain", "failed"], ["probe", "stale"], ["export", "stale"]
    ]  # fmt: skip
    assert rows[2][2].strip() == "from before pretrain's latest attempt (failed);"
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    cells = re.findall(r"<tr class='(\w+)'><td>(\w+)</td>", page)
    assert cells == [
        ("succeeded", "ingest"), ("failed", "pretrain"), ("stale", "probe"), ("stale", "export")
    ]  # fmt: skip


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_published_outputs_take_the_umask(tmp_path: Path, umask: int) -> None:
    """What a library writes as a private temporary file (safetensors: 0600) is published
    like every other output: in the workdir, and in a model registry (promoted from the
    export's staging folder, before the stage's outputs are published)."""
    store = RunStore(tmp_path / "runs")
    staging = store.begin("export")
    private, _ = tempfile.mkstemp(dir=staging)
    os.close(private)
    (staging / "sub").mkdir(mode=0o700)
    (staging / "sub" / "card.json").write_text("{}")
    previous = os.umask(umask)
    try:
        ModelRegistry(tmp_path / "registry").promote(staging, "probe.top1", 50.0, 0.0)
        store.commit("export", staging, {"status": "succeeded"})
    finally:
        os.umask(previous)
    for published in (tmp_path / "runs" / "export", tmp_path / "registry" / "v0001"):
        modes = {p.name: p.stat().st_mode & 0o777 for p in published.rglob("*")}
        assert modes.pop("sub") == published.stat().st_mode & 0o777 == 0o777 & ~umask
        assert set(modes.values()) == {0o666 & ~umask}, (published, modes)
