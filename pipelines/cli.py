"""``sslpipe`` command line.

Each command is a ``register(commands)`` function that adds one sub-parser whose ``handler``
does the work; ``COMMANDS`` lists them. User errors end as one line on stderr and a
non-zero exit code (2 for an invalid spec), never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_args import add_spec_arguments
from .cli_datasets import register_bench_loader, register_ingest
from .cli_deploy import register_submit
from .errors import SpecError, UserError

if TYPE_CHECKING:
    from .spec import PipelineSpec


def _load(args: argparse.Namespace) -> PipelineSpec:
    from .spec import load_spec

    return load_spec(args.spec, args.overrides)


def _validate(args: argparse.Namespace) -> None:
    spec = _load(args)
    print(f"{args.spec}: valid ({len(spec.stages)} stages)")


def _run(args: argparse.Namespace) -> None:
    from .runner import run_pipeline

    run_pipeline(_load(args), force=tuple(args.force), if_changed=args.if_changed)


def _plan(args: argparse.Namespace) -> None:
    from .runner import print_plan

    print_plan(_load(args), force=tuple(args.force))


def _status(args: argparse.Namespace) -> None:
    from .runner import print_status

    print_status(Path(args.workdir))


def _report(args: argparse.Namespace) -> None:
    from .report import write_report

    print(write_report(Path(args.workdir)))


def _registry(args: argparse.Namespace) -> None:
    from .registry import ModelRegistry

    registry = ModelRegistry(args.registry)
    if args.action == "rollback":
        if not args.version:
            raise UserError("registry rollback needs the version to point latest at, e.g. v0002")
        registry.rollback(args.version)
    latest = registry.latest()
    print(f"{registry.root}: latest -> {latest.name if latest else 'none'}")
    for record in registry.history():
        if record.get("rollback"):
            print(f"  {record['time']}  rollback to {record['version']}")
        else:
            print(f"  {record['time']}  {record.get('version') or '-':<6} {record['reason']}")


def register_run(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="run a pipeline spec, skipping up-to-date stages")
    add_spec_arguments(parser)
    parser.add_argument(
        "--force", action="append", default=[], metavar="STAGE", help="rerun this stage"
    )
    parser.add_argument(
        "--if-changed",
        action="store_true",
        help="exit 0 without work when nothing changed since the last successful run",
    )
    parser.set_defaults(handler=_run)


def register_plan(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("plan", help="print, per stage, run or skip and why")
    add_spec_arguments(parser)
    parser.add_argument("--force", action="append", default=[], metavar="STAGE")
    parser.set_defaults(handler=_plan)


def register_validate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("validate", help="check a spec without running anything")
    add_spec_arguments(parser)
    parser.set_defaults(handler=_validate)


def register_registry(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "registry", help="show a model registry's history, or point latest at an earlier version"
    )
    parser.add_argument("action", choices=["show", "rollback"])
    parser.add_argument("registry", help="registry folder")
    parser.add_argument("version", nargs="?", help="for rollback: the version, e.g. v0002")
    parser.set_defaults(handler=_registry)


def register_status(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("status", help="print a table of a workdir's stages")
    parser.add_argument("workdir")
    parser.set_defaults(handler=_status)


def register_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="write <workdir>/report.html with plots")
    parser.add_argument("workdir")
    parser.set_defaults(handler=_report)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    register_run,
    register_plan,
    register_validate,
    register_status,
    register_report,
    register_registry,
    register_ingest,
    register_bench_loader,
    register_submit,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe", description="Self-supervised pretraining pipelines."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(commands)
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
    except KeyboardInterrupt as interrupt:
        reason = f" ({interrupt})" if str(interrupt) else ""
        print(f"interrupted{reason}; the same command continues from here", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
