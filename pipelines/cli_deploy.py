"""``sslpipe submit``: the argument layer over ``submit.submit``."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    parser.add_argument("spec", help="pipeline spec (YAML) inside --working-dir")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="PATH=VALUE",
        help="override a spec value, e.g. stages.pretrain.epochs=5 (repeatable)",
    )
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
