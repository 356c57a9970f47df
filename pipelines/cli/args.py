"""Arguments that several ``sslpipe`` commands share."""

from __future__ import annotations

import argparse


def add_spec_arguments(parser: argparse.ArgumentParser, spec_help: str = "pipeline spec") -> None:
    """The spec file, its repeatable ``--set PATH=VALUE`` overrides (``args.overrides``) and
    ``--force STAGE`` (``args.force``, checked against the spec's stages when it is loaded)."""
    parser.add_argument("spec", help=spec_help)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="PATH=VALUE",
        help="override a spec value, e.g. stages.pretrain.epochs=5 (repeatable)",
    )
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="rerun this stage and everything downstream of it (repeatable)",
    )


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` and ``--debug``; added to ``sslpipe`` and to every command, so that they
    work before or after the command's name (unset values do not overwrite the other's)."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show Ray's own output (its logs and workers' prefixed lines)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error, not only its one line",
    )
