"""``sslpipe submit``: run a spec on a Ray cluster as a Ray Job (Ray's Job Submission API).

The spec is validated here first, with the same overrides, so an invalid spec fails before
anything is sent. The job's entrypoint is ``sslpipe run SPEC --set …``; the project folder
travels as the job's ``working_dir`` (specs, ``extends`` bases), while the code that runs is
the ``sslpipe`` installed on the cluster's nodes (``deploy/Dockerfile``). Inside the job Ray
sets ``RAY_ADDRESS``, so ``sslpipe run`` joins the cluster instead of starting its own Ray.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .spec import load_spec

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


def _job_entrypoint(spec: Path, overrides: Sequence[str]) -> str:
    """The shell command the job runs: ``sslpipe run SPEC --set A=B …``, quoted."""
    words = ["sslpipe", "run", spec.as_posix()]
    for override in overrides:
        words += ["--set", override]
    return shlex.join(words)


def _relative_spec(spec: Path, working_dir: Path) -> Path:
    """``spec`` relative to ``working_dir``; a spec outside it would not reach the cluster."""
    try:
        return spec.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise UserError(
            f"{spec}: outside the working dir {working_dir}, so it would not reach the cluster"
        ) from None


@contextmanager
def _cluster_errors(address: str) -> Iterator[None]:
    """Turn what the cluster's dashboard answers (or not) into one-line ``UserError``s."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as error:
        reason = " ".join(error.message.split())
        raise UserError(f"{address} refused the token (RAY_AUTH_TOKEN): {reason}") from None
    except ConnectionError as error:
        reason = " ".join(str(error).split())
        raise UserError(f"no Ray dashboard at {address}: {reason}") from None
    except (RuntimeError, ValueError) as error:
        raise UserError(f"{address}: {' '.join(str(error).split())}") from None


def _warn_if_workdir_is_relative(workdir: str) -> None:
    if not Path(workdir).is_absolute():
        print(
            f"warning: workdir {workdir!r} is relative, so on the cluster it lands in the "
            "job's temporary copy of the project; use --set workdir=/a/path/every/node/sees",
            file=sys.stderr,
        )


def submit(
    spec: Path, overrides: Sequence[str], *, address: str, working_dir: Path, follow: bool
) -> None:
    """Validate ``spec``, submit it as a Ray Job, print its id; with ``follow``, stream its logs.

    Raises ``SpecError`` (nothing sent) for an invalid spec and ``UserError`` for a cluster
    that cannot be reached or refuses the job or, with ``follow``, a job that did not succeed.
    """
    from ray.job_submission import JobSubmissionClient

    pipeline = load_spec(spec, overrides)
    entrypoint = _job_entrypoint(_relative_spec(spec, working_dir), overrides)
    _warn_if_workdir_is_relative(pipeline.workdir)
    with _cluster_errors(address):
        client = JobSubmissionClient(address)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES},
            metadata={"sslpipe_spec": pipeline.name, "sslpipe_workdir": pipeline.workdir},
        )
        print(job_id, flush=True)
        if follow:
            _follow(client, job_id, address)


def _follow(client: JobSubmissionClient, job_id: str, address: str) -> None:
    """Print the job's logs as they come, then fail unless it succeeded."""
    from ray.job_submission import JobStatus

    try:
        asyncio.run(_print_logs(client, job_id))
    except KeyboardInterrupt:
        print(
            f"the job keeps running; stop it with: ray job stop {job_id} --address {address}",
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
