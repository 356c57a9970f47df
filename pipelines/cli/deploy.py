"""``sslpipe submit`` and ``sslpipe job``: the argument layer over ``submit``.

The address follows ``ray job submit``: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else
``RAY_ADDRESS``. The token of a cluster with Ray's token authentication: ``--token-file``,
else ``RAY_AUTH_TOKEN``, else ``RAY_AUTH_TOKEN_PATH``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_output_options, add_spec_arguments

_ADDRESS_HELP = (
    "the cluster's dashboard, e.g. http://HEAD:8265 "
    "(default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)"
)
_TOKEN_FILE_HELP = (
    "file holding the cluster's token (Ray token authentication; default: $RAY_AUTH_TOKEN, "
    "else the file $RAY_AUTH_TOKEN_PATH names)"
)
# `sslpipe job ACTION`: what each action does, shown by `sslpipe job --help` and ACTION --help.
JOB_ACTIONS = {
    "status": "print the job's state (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and, once "
    "it ended, the first line of its message",
    "logs": "print the job's logs so far and return",
    "follow": "stream the job's logs until it ends; exit 0 only if it SUCCEEDED (Ctrl-C stops "
    "following, not the job)",
    "stop": "ask the cluster to stop the job; submitting the same spec again resumes it "
    "(finished stages are skipped, pretraining continues from its last checkpoint)",
}


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help=_ADDRESS_HELP)
    parser.add_argument("--token-file", type=Path, metavar="FILE", help=_TOKEN_FILE_HELP)


def _submit(args: argparse.Namespace) -> None:
    from .submit import submit

    run_options = ["--if-changed"] if args.if_changed else []
    run_options += ["--verbose"] if getattr(args, "verbose", False) else []
    submit(
        Path(args.spec),
        args.overrides,
        address=args.address,
        working_dir=Path(args.working_dir),
        wait=not args.no_wait,
        force=args.force,
        run_options=run_options,
        token_file=args.token_file,
    )


def register_submit(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "submit", help="run a spec on a Ray cluster as a Ray Job, streaming its logs until it ends"
    )
    add_spec_arguments(parser, "pipeline spec inside --working-dir")
    _add_cluster_arguments(parser)
    parser.add_argument(
        "--working-dir",
        default=".",
        help="project folder uploaded as the job's working_dir (default: the current one)",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="print the job id and return at once"
    )
    parser.add_argument("--if-changed", action="store_true", help="the job runs with --if-changed")
    # Waiting is the default now; --follow is kept so that older scripts keep working.
    parser.add_argument("--follow", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(handler=_submit)


def _job(args: argparse.Namespace) -> None:
    from .submit import job_command

    job_command(args.action, args.job_id, args.address, args.token_file)


def register_job(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "job", help="a submitted job: its status, its logs (follow: as they come), or stop it"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text in JOB_ACTIONS.items():
        command = actions.add_parser(action, help=help_text, description=help_text)
        command.add_argument("job_id", help="the id submit printed, e.g. raysubmit_…")
        _add_cluster_arguments(command)
        add_output_options(command)
        command.set_defaults(handler=_job)
