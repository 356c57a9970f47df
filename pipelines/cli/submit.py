"""``sslpipe submit`` and ``sslpipe job``: run a spec on a Ray cluster as a Ray Job (Ray's Job
Submission API), with ``ray job submit``'s conventions.

The cluster's address is ``--address``, else ``RAY_API_SERVER_ADDRESS``, else
``RAY_ADDRESS``: the dashboard's URL (``http://HEAD:8265``; a bare ``HEAD:8265`` means the
same). The spec is validated here first, with the same overrides, so an invalid spec fails
before anything is sent; what depends on the cluster (data paths, GPUs) is checked by the
job itself, before any stage starts. The job's entrypoint is ``sslpipe run SPEC --set …``;
the project folder travels as the job's ``working_dir`` (specs, ``extends`` bases), while
the code that runs is the ``sslpipe`` installed on the cluster's nodes
(``deploy/Dockerfile``). Inside the job Ray sets ``RAY_ADDRESS``, so ``sslpipe run`` joins
the cluster instead of starting its own Ray. ``submit`` waits for the job and streams its
logs (``wait=False``: returns once it is submitted).

A cluster with Ray's token authentication (every cluster ``deploy/`` ships) takes its token
from ``--token-file``, else ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names.
It is sent as the ``Authorization: Bearer`` header Ray's dashboard checks, so nothing else
(``RAY_AUTH_MODE=token`` for Ray's own client) needs setting.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError, UserError
from ..spec.pipeline import load_spec

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

# Never uploaded: environments, run outputs, caches and version control (gitignore syntax).
WORKING_DIR_EXCLUDES = [
    ".venv/",
    ".git/",
    "runs/",
    "build/",
    "*.egg-info/",
    "__pycache__/",
    ".pytest_cache/",
    ".ruff_cache/",
]


ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d+$")


def cluster_address(address: str | None) -> str:
    """The dashboard URL to talk to: ``address``, else the first variable of
    ``ADDRESS_VARIABLES`` that is set; a bare ``host:port`` becomes ``http://host:port``."""
    source = "--address"
    if not address:
        source, address = next(
            ((name, os.environ[name]) for name in ADDRESS_VARIABLES if os.environ.get(name)),
            ("", ""),
        )
    if not address:
        raise UsageError(
            "no cluster address: give --address http://HEAD:8265 (the Ray dashboard), or set "
            "RAY_API_SERVER_ADDRESS"
        )
    if address.startswith("ray://"):
        raise UsageError(
            f"{source} {address}: that is a Ray Client address; jobs go to the dashboard, "
            "e.g. http://HEAD:8265"
        )
    if _HOST_PORT.match(address):
        return f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise UsageError(f"{source} {address}: expected the dashboard's URL, e.g. http://HEAD:8265")
    return address


def _job_entrypoint(spec: Path, overrides: Sequence[str], options: Sequence[str]) -> str:
    """The shell command the job runs: ``sslpipe run SPEC --set A=B … OPTIONS``, quoted."""
    words = ["sslpipe", "run", spec.as_posix()]
    for override in overrides:
        words += ["--set", override]
    return shlex.join([*words, *options])


def _relative_spec(spec: Path, working_dir: Path) -> Path:
    """``spec`` relative to ``working_dir``; a spec outside it would not reach the cluster."""
    try:
        return spec.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise UserError(
            f"{spec}: outside the working dir {working_dir}, so it would not reach the cluster"
        ) from None


TOKEN_VARIABLE, TOKEN_PATH_VARIABLE = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
TOKEN_SOURCES = f"--token-file FILE, {TOKEN_VARIABLE} or {TOKEN_PATH_VARIABLE}"


@dataclass(frozen=True)
class ClusterToken:
    """A token for Ray's token authentication, and where it came from (for messages; the
    value itself is never printed)."""

    value: str = field(repr=False)
    source: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def cluster_token(token_file: Path | None) -> ClusterToken | None:
    """``token_file``, else ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names (the
    order Ray itself reads the two variables in); ``None`` when none is given."""
    if token_file is not None:
        return _token_from_file(token_file, f"--token-file {token_file}")
    if value := os.environ.get(TOKEN_VARIABLE, "").strip():
        return ClusterToken(value, TOKEN_VARIABLE)
    if path := os.environ.get(TOKEN_PATH_VARIABLE):
        return _token_from_file(Path(path), f"{TOKEN_PATH_VARIABLE}={path}")
    return None


def _token_from_file(path: Path, source: str) -> ClusterToken:
    try:
        value = path.expanduser().read_text().strip()
    except OSError as error:
        raise UserError(f"{source}: cannot read the token: {error.strerror}") from None
    if not value:
        raise UserError(f"{source}: the file is empty; it should hold the cluster's token")
    return ClusterToken(value, source)


@contextmanager
def _cluster_errors(address: str, token: ClusterToken | None) -> Iterator[None]:
    """Turn what the cluster's dashboard answers (or not) into one-line ``UserError``s."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as error:
        reason = error.message.splitlines()[0]
        if token is not None:
            raise UserError(f"{address} refused the token from {token.source}: {reason}") from None
        if reason.startswith("Authentication failed"):  # 403: a token Ray found by itself
            source = "the token Ray read itself (RAY_AUTH_MODE=token, ~/.ray/auth_token)"
            raise UserError(f"{address} refused {source}: {reason}; give {TOKEN_SOURCES}") from None
        raise UserError(f"{address} wants a token ({reason}): give {TOKEN_SOURCES}") from None
    except ConnectionError as error:
        reason = " ".join(str(error).split())
        raise UserError(f"no Ray dashboard at {address}: {reason}") from None
    except (RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())
        if "does not exist" in reason:  # a job id that the cluster does not know
            raise UsageError(f"{address}: {reason}") from None
        raise UserError(f"{address}: {reason}") from None


def _warn_if_workdir_is_relative(workdir: str) -> None:
    if not Path(workdir).is_absolute():
        print(
            f"warning: workdir {workdir!r} is relative, so on the cluster it lands in the "
            "job's temporary copy of the project; use --set workdir=/a/path/every/node/sees",
            file=sys.stderr,
        )


def submit(
    spec: Path,
    overrides: Sequence[str],
    *,
    address: str | None,
    working_dir: Path,
    wait: bool = True,
    force: Sequence[str] = (),
    run_options: Sequence[str] = (),
    token_file: Path | None = None,
) -> str:
    """Validate ``spec``, submit it as a Ray Job and print its id; with ``wait``, stream its
    logs until it ends. ``run_options`` are added to the job's ``sslpipe run`` (e.g.
    ``--if-changed``); ``token_file``: see ``cluster_token``. Returns the job id.

    Raises ``SpecError`` (nothing sent) for an invalid spec and ``UserError`` for a cluster
    that cannot be reached or refuses the job or, with ``wait``, a job that did not succeed.
    """
    pipeline = load_spec(spec, overrides, force)
    options = [*(word for stage in force for word in ("--force", stage)), *run_options]
    entrypoint = _job_entrypoint(_relative_spec(spec, working_dir), overrides, options)
    _warn_if_workdir_is_relative(pipeline.workdir)
    url = cluster_address(address)
    token = cluster_token(token_file)
    with _cluster_errors(url, token):
        client = _client(url, token)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES},
            metadata={"sslpipe_spec": pipeline.name, "sslpipe_workdir": pipeline.workdir},
        )
        print(job_id, flush=True)
        if wait:
            follow_job(client, job_id)
    return job_id


def _client(url: str, token: ClusterToken | None) -> JobSubmissionClient:
    """A client of the dashboard at ``url`` that sends ``token`` with every request. Ray would
    let ``ADDRESS_VARIABLES`` override the address it is given; ``url`` has honoured them
    already, after ``--address``."""
    from ray.job_submission import JobSubmissionClient

    hidden = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if name in os.environ}
    try:
        return JobSubmissionClient(url, headers=token.headers() if token else None)
    finally:
        os.environ.update(hidden)


def job_command(
    action: str, job_id: str, address: str | None, token_file: Path | None = None
) -> None:
    """``sslpipe job status|logs|follow|stop JOB_ID``."""
    url = cluster_address(address)
    token = cluster_token(token_file)
    with _cluster_errors(url, token):
        client = _client(url, token)
        if action == "status":
            info = client.get_job_info(job_id)
            message = f": {info.message.splitlines()[0]}" if info.message else ""
            print(f"{job_id} {info.status.value}{message}")
        elif action == "logs":
            print(client.get_job_logs(job_id), end="", flush=True)
        elif action == "follow":
            follow_job(client, job_id)
        else:
            stopped = client.stop_job(job_id)
            print(f"{job_id}: {'stop requested' if stopped else 'already finished'}")


def follow_job(client: JobSubmissionClient, job_id: str) -> None:
    """Print the job's logs as they come, then fail unless it succeeded."""
    from ray.job_submission import JobStatus

    # An answer over HTTP first: the log stream (a websocket) would report a refused token or
    # an unknown job as a bare handshake error.
    client.get_job_status(job_id)
    try:
        asyncio.run(_print_logs(client, job_id))
    except KeyboardInterrupt:
        print(
            f"the job keeps running; `sslpipe job stop {job_id}` stops it, "
            f"`sslpipe job follow {job_id}` follows it again",
            file=sys.stderr,
        )
        raise
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can close a moment before the status
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        message = (client.get_job_info(job_id).message or "no message").splitlines()[0]
        raise UserError(f"job {job_id} {status.value}: {message}")


async def _print_logs(client: JobSubmissionClient, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        print(chunk, end="", flush=True)
