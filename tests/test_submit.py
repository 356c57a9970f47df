"""``sslpipe submit`` against a real Ray head on loopback, started and torn down by the test."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "pipelines/examples/quickstart.yaml"
# The quickstart, shrunk to a few seconds of work: 600 images in shards of 100, one epoch.
SMALL = ("stages.ingest.source.num_images=600", "stages.ingest.shard_size=100")

pytestmark = pytest.mark.slow

# The head, the jobs and sslpipe submit share one token of their own (Ray's token
# authentication, as on a real cluster), and no other Ray cluster's address.
TOKEN = secrets.token_hex(32)
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
ENV |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held open together, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _wait_for_dashboard(url: str, head: subprocess.Popen, temp_dir: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and head.poll() is None:
        try:
            _get(f"{url}/api/version")
            return
        except OSError:
            time.sleep(1)
    logs = [temp_dir / "ray-start.log", temp_dir / "session_latest/logs/dashboard.log"]
    tails = "\n".join(p.read_text()[-2000:] for p in logs if p.exists())
    raise RuntimeError(f"no Ray dashboard at {url} (ray start: {head.poll()}):\n{tails}")


def _stop(head: subprocess.Popen) -> None:
    """Stop this head and everything it started (its own process group), nothing else."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(timeout=3)
    with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head with its dashboard on loopback; yields the dashboard's address."""
    temp_dir = Path("/tmp") / f"sslsub-{os.getpid()}"
    temp_dir.mkdir()
    dashboard, client, metrics, agent = _free_ports(4)
    bin_dir = Path(sys.executable).parent
    env = {**ENV, "PATH": f"{bin_dir}{os.pathsep}{ENV.get('PATH', '')}"}  # jobs run `sslpipe`
    command = [str(bin_dir / "ray"), "start", "--head", "--block", "--port=0"]
    command += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
    command += ["--include-dashboard=true", f"--dashboard-port={dashboard}"]
    command += [f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}"]
    command += [f"--dashboard-agent-listen-port={agent}"]
    command += [f"--temp-dir={temp_dir}", "--num-cpus=2", "--disable-usage-stats"]
    with (temp_dir / "ray-start.log").open("w") as log:
        head = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_dashboard(url, head, temp_dir)
        yield url
    finally:
        _stop(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(*args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sslpipe.pipelines.cli", "submit", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )


def _sets(*overrides: str) -> list[str]:
    return [word for override in overrides for word in ("--set", override)]


def test_submit_runs_the_quickstart_on_the_cluster(ray_head: str, tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    overrides = [f"workdir={workdir}", "stages.pretrain.epochs=1", *SMALL]
    result = _submit(QUICKSTART, "--address", ray_head, "--follow", *_sets(*overrides))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_"), result.stdout[:500]
    assert str(workdir / "export" / "model.onnx") in result.stdout  # the job's own logs
    for name in ("model.onnx", "model.pt2", "model_card.json"):
        assert (workdir / "export" / name).is_file(), name
    assert "Traceback" not in result.stderr


def test_failed_job_exits_1_with_its_status(ray_head: str, tmp_path: Path) -> None:
    # Valid locally, fails on the cluster: the ingest source is a folder that does not exist.
    missing_source = f"stages.ingest.source={{kind: image_folder, path: {tmp_path / 'none'}}}"
    result = _submit(
        QUICKSTART,
        "--address",
        ray_head,
        "--follow",
        *_sets(f"workdir={tmp_path / 'runs'}", missing_source),
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: job raysubmit_") and " FAILED: " in last, result.stderr


def test_invalid_spec_fails_before_anything_is_sent(ray_head: str, tmp_path: Path) -> None:
    result = _submit(
        QUICKSTART,
        "--address",
        ray_head,
        *_sets(f"workdir={tmp_path / 'runs'}", "stages.pretrain.epochz=1"),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "--set stages.pretrain.epochz=1: stages[1].epochz: unknown key 'epochz'; "
        "did you mean 'epochs'?"
    )
    assert result.stdout == ""
    assert "epochz" not in _get(f"{ray_head}/api/jobs/")


def test_unreachable_address_is_one_line(tmp_path: Path) -> None:
    result = _submit(
        QUICKSTART,
        "--address",
        f"http://127.0.0.1:{_free_ports(1)[0]}",
        "--set",
        f"workdir={tmp_path / 'runs'}",
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: no Ray dashboard")
    assert result.stdout == ""


def test_wrong_token_is_one_line(ray_head: str, tmp_path: Path) -> None:
    result = _submit(
        QUICKSTART,
        "--address",
        ray_head,
        "--set",
        f"workdir={tmp_path / 'runs'}",
        env={**ENV, "RAY_AUTH_TOKEN": secrets.token_hex(32)},
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {ray_head} refused the token"), result.stderr
