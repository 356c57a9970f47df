"""Arguments that several ``sslpipe`` commands share."""

from __future__ import annotations

import argparse


def add_spec_arguments(parser: argparse.ArgumentParser, spec_help: str = "pipeline spec") -> None:
    """The spec file and its repeatable ``--set PATH=VALUE`` overrides (``args.overrides``)."""
    parser.add_argument("spec", help=spec_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="PATH=VALUE",
        help="override a spec value, e.g. stages.pretrain.epochs=5 (repeatable)",
    )
