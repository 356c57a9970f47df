"""``sslpipe submit`` and ``sslpipe job`` against a real Ray head on loopback, started and torn
down by the test, with Ray's token authentication on (as on every cluster deploy/ ships)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_clusters import RayHead, free_ports, start_head

from sslpipe.pipelines.cli.main import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = "pipelines/examples/quickstart.yaml"
# The quickstart, shrunk to a few seconds of work: 600 images in shards of 100, one epoch
# (without its warm-up epoch).
SMALL = ("stages.ingest.source.num_images=600", "stages.ingest.shard_size=100")
ONE_EPOCH = ("stages.pretrain.epochs=1", "stages.pretrain.warmup_epochs=0")

pytestmark = pytest.mark.slow

# The head and its jobs run with Ray's token authentication and a token of their own, and no
# other Ray cluster's address. sslpipe gets only the token (RAY_AUTH_TOKEN here; a file in
# some tests): it must set whatever else Ray's client needs itself.
TOKEN = secrets.token_hex(32)
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER_ADDRESS"))
}
HEAD_ENV = CLEAN_ENV | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
ENV = CLEAN_ENV | {"RAY_AUTH_TOKEN": TOKEN}


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def _job_ids(dashboard: str) -> set[str]:
    return {job["submission_id"] for job in json.loads(_get(f"{dashboard}/api/jobs/"))}


def _wait_for_dashboard(head: RayHead) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            _get(f"{head.dashboard}/api/version")
            return
        except OSError:
            time.sleep(1)
    log = head.temp_dir / "session_latest/logs/dashboard.log"
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"no Ray dashboard at {head.dashboard}:\n{tail}")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head with its dashboard on loopback and the test's token; yields the dashboard's
    address. 4 logical CPUs: the quickstart's two workers take dali_threads + 1 each."""
    temp_dir = Path("/tmp") / f"sslsub-{os.getpid()}"
    head = start_head(temp_dir, num_cpus=4, env=HEAD_ENV)
    try:
        _wait_for_dashboard(head)
        yield head.dashboard
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _sslpipe(*args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sslpipe.pipelines.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )


def _submit(*args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return _sslpipe("submit", *args, env=env)


def _sets(*overrides: str) -> list[str]:
    return [word for override in overrides for word in ("--set", override)]


def test_submit_runs_the_quickstart_on_the_cluster(ray_head: str, tmp_path: Path) -> None:
    """The address from RAY_API_SERVER_ADDRESS, bare host:port; the token from RAY_AUTH_TOKEN
    alone (no RAY_AUTH_MODE); submit waits and streams."""
    workdir = tmp_path / "runs"
    overrides = [f"workdir={workdir}", *ONE_EPOCH, *SMALL]
    env = {**ENV, "RAY_API_SERVER_ADDRESS": ray_head.removeprefix("http://")}
    result = _submit(QUICKSTART, *_sets(*overrides), env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_"), result.stdout[:500]
    assert str(workdir / "export" / "model.onnx") in result.stdout  # the job's own logs
    for name in ("model.onnx", "model.pt2", "model_card.json"):
        assert (workdir / "export" / name).is_file(), name
    assert "Traceback" not in result.stderr
    # Quiet by default: our progress lines, none of Ray's prefixes or notices.
    assert "[pretrain] step 3/3 (100%)" in result.stdout
    for noise in ("pid=", "PreemptionWatcher", "Token authentication"):
        assert noise not in result.stdout + result.stderr, noise


def test_a_failed_job_seen_through_the_job_commands(ray_head: str, tmp_path: Path) -> None:
    # Valid here, fails on the cluster before any stage starts: the data is not there.
    missing_source = f"stages.ingest.source={{kind: image_folder, path: {tmp_path / 'none'}}}"
    overrides = _sets(f"workdir={tmp_path / 'runs'}", missing_source)
    submitted = _submit(QUICKSTART, "--address", ray_head, "--no-wait", *overrides)
    assert submitted.returncode == 0, submitted.stderr
    (job_id,) = submitted.stdout.split()
    # The token from a file: --token-file, or the file RAY_AUTH_TOKEN_PATH names.
    token_file = tmp_path / "ray_token"
    token_file.write_text(f"{TOKEN}\n")
    by_option = ("--address", ray_head, "--token-file", str(token_file))
    by_path = CLEAN_ENV | {"RAY_AUTH_TOKEN_PATH": str(token_file)}
    followed = _sslpipe("job", "follow", job_id, *by_option, env=CLEAN_ENV)
    assert followed.returncode == 1, followed.stdout[-3000:] + followed.stderr[-3000:]
    last = followed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: job {job_id} FAILED: "), followed.stderr
    why = f"stages[0].source.path: {tmp_path / 'none'} does not exist"
    assert why in followed.stdout  # the job's own one line, streamed
    status = _sslpipe("job", "status", job_id, "--address", ray_head, env=by_path)
    assert status.returncode == 0 and status.stdout.startswith(f"{job_id} FAILED")
    logs = _sslpipe("job", "logs", job_id, *by_option, env=CLEAN_ENV)
    assert why in logs.stdout and "Traceback" not in logs.stdout
    stopped = _sslpipe("job", "stop", job_id, "--address", ray_head, env=by_path)
    assert stopped.stdout.strip() == f"{job_id}: already finished"
    unknown = _sslpipe("job", "status", "raysubmit_nosuchjob", "--address", ray_head)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1


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


def test_addresses_that_cannot_work_are_one_line(tmp_path: Path) -> None:
    workdir = f"workdir={tmp_path / 'runs'}"
    port = free_ports(1)[0]
    result = _submit(QUICKSTART, "--address", f"127.0.0.1:{port}", "--set", workdir)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: no Ray dashboard at http://127.0.0.1:{port}")
    for address, code, start in [
        (f"ray://127.0.0.1:{port}", 2, "error: --address ray://127.0.0.1:"),
        ("", 2, "error: no cluster address: give --address http://HEAD:8265"),
    ]:
        result = _submit(QUICKSTART, *(["--address", address] if address else []), "--set", workdir)
        assert result.returncode == code and result.stderr.startswith(start), result.stderr
        assert result.stderr.count("\n") == 1


def test_without_the_token_or_with_a_wrong_one_each_command_is_one_line(
    ray_head: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """submit and the four job commands without a token, with a wrong one (from RAY_AUTH_TOKEN
    or --token-file) and with an unreadable token file: one line each, exit 1, no job sent.
    In this process (the CLI's ``main``), to import Ray once for the 12 commands."""
    wrong_file = tmp_path / "wrong_token"
    wrong_file.write_text(secrets.token_hex(32))
    missing_file = tmp_path / "no_such_token"
    wrong_variable = {"RAY_AUTH_TOKEN": secrets.token_hex(32)}
    submit = ["submit", QUICKSTART, "--set", f"workdir={tmp_path / 'runs'}"]
    jobs = [["job", action, "raysubmit_anyjob"] for action in ("status", "logs", "follow", "stop")]
    refused = f"error: {ray_head} refused the token from"
    wrong_option = ["--token-file", str(wrong_file)]
    cases = [  # (command, token arguments, environment, how its one line starts)
        *((c, [], {}, f"error: {ray_head} wants a token") for c in [submit, *jobs]),
        *((c, [], wrong_variable, f"{refused} RAY_AUTH_TOKEN: ") for c in [submit, jobs[0]]),
        *(
            (c, wrong_option, {}, f"{refused} {' '.join(wrong_option)}: ")
            for c in [submit, *jobs[1:]]
        ),
        (
            jobs[2],
            [],
            {"RAY_AUTH_TOKEN_PATH": str(missing_file)},
            f"error: RAY_AUTH_TOKEN_PATH={missing_file}: cannot read the token",
        ),
    ]
    jobs_before = _job_ids(ray_head)
    monkeypatch.chdir(REPO)
    for name in [n for n in os.environ if n not in CLEAN_ENV]:
        monkeypatch.delenv(name)
    for command, token, env, start in cases:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            code = main([*command, "--address", ray_head, *token])
        out, err = capsys.readouterr()
        where = f"{' '.join(command[:2])} {' '.join(token)} {env}: {err}"
        assert code == 1 and out == "", where
        assert err.count("\n") == 1 and err.startswith(start), where
    assert _job_ids(ray_head) == jobs_before
