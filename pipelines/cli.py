"""``sslpipe`` command line: run and validate pipeline specs."""

from __future__ import annotations

import argparse
import sys

from .errors import SpecError, UserError


def _cmd_validate(args: argparse.Namespace) -> None:
    from .spec import load_spec

    spec = load_spec(args.spec)
    print(f"{args.spec}: valid ({len(spec.stages)} stages)")


def _cmd_run(args: argparse.Namespace) -> None:
    from .runner import run_pipeline
    from .spec import load_spec

    run_pipeline(load_spec(args.spec), force=tuple(args.force))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslpipe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a spec without running anything")
    validate.add_argument("spec")
    validate.set_defaults(handler=_cmd_validate)
    run = commands.add_parser("run", help="run a pipeline spec (skipping up-to-date stages)")
    run.add_argument("spec")
    run.add_argument(
        "--force", action="append", default=[], metavar="STAGE", help="rerun this stage"
    )
    run.set_defaults(handler=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except SpecError as error:
        print(error, file=sys.stderr)
        return error.exit_code
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
