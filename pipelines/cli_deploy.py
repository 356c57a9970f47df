"""``sslpipe submit`` and ``sslpipe job``: the argument layer over ``submit``.

The address follows ``ray job submit``: ``--address``, else ``RAY_API_SERVER_ADDRESS``, else
``RAY_ADDRESS``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_args import add_spec_arguments

_ADDRESS_HELP = (
    "the cluster's dashboard, e.g. http://HEAD:8265 "
    "(default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS)"
)


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
    )


def register_submit(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "submit", help="run a spec on a Ray cluster as a Ray Job, streaming its logs until it ends"
    )
    add_spec_arguments(parser, "pipeline spec inside --working-dir")
    parser.add_argument("--address", help=_ADDRESS_HELP)
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

    job_command(args.action, args.job_id, args.address)


def register_job(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "job", help="a submitted job: its status, its logs (follow: as they come), or stop it"
    )
    parser.add_argument("action", choices=["status", "logs", "follow", "stop"])
    parser.add_argument("job_id", help="the id submit printed, e.g. raysubmit_…")
    parser.add_argument("--address", help=_ADDRESS_HELP)
    parser.set_defaults(handler=_job)
