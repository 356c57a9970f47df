"""``sslpipe submit``: the argument layer over ``submit.submit``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_args import add_spec_arguments


def _submit(args: argparse.Namespace) -> None:
    from .submit import submit

    submit(
        Path(args.spec),
        args.overrides,
        address=args.address,
        working_dir=Path(args.working_dir),
        follow=args.follow,
    )


def register_submit(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "submit", help="run a spec on a Ray cluster as a Ray Job (sslpipe run on the cluster)"
    )
    add_spec_arguments(parser, "pipeline spec inside --working-dir")
    parser.add_argument(
        "--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265"
    )
    parser.add_argument(
        "--working-dir",
        default=".",
        help="project folder uploaded as the job's working_dir (default: the current one)",
    )
    parser.add_argument(
        "--follow", action="store_true", help="stream the logs; exit 0 only if the job succeeded"
    )
    parser.set_defaults(handler=_submit)
