"""``sslpipe`` command line.

Each command is a ``register(commands)`` function that adds one sub-parser whose ``handler``
does the work; ``COMMANDS`` lists them. The handlers call the Python API (``import
sslpipe``), so both take the same paths. ``main`` is the one place errors are printed: one
line each (every problem of a spec), exit 2 when the spec or the arguments must change, 1 when
the machine must; a traceback only with ``--debug``. Ctrl-C and SIGTERM alike: one line saying
where the command stopped, exit 130 (``run/interrupt.py``).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import sslpipe

from ..errors import ENVIRONMENT_EXIT, SpecError, UsageError, UserError, one_line
from ..run.interrupt import handle_stop_signals, stop_requested
from .args import add_output_options, add_spec_arguments
from .datasets import register_bench_loader, register_ingest
from .deploy import register_job, register_submit

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
# What an interrupted command leaves, where it is certain.
_CONTINUES = "the same command continues from here"
_AFTER_INTERRUPT = {
    "run": _CONTINUES,
    "ingest": _CONTINUES,
    "validate": "nothing was changed",
    "plan": "nothing was changed",
}


def _validate(args: argparse.Namespace) -> None:
    spec = sslpipe.validate(args.spec, set=args.overrides, force=args.force)
    print(f"{args.spec}: valid ({len(spec.stages)} stages)")


def _run(args: argparse.Namespace) -> None:
    sslpipe.run(args.spec, set=args.overrides, force=args.force, if_changed=args.if_changed)


def _plan(args: argparse.Namespace) -> None:
    from ..run.runner import print_plan

    print_plan(sslpipe.plan(args.spec, set=args.overrides, force=args.force))


def _status(args: argparse.Namespace) -> None:
    from ..run.runner import print_status

    print_status(Path(args.workdir))


def _report(args: argparse.Namespace) -> None:
    from ..run.report import write_report

    print(write_report(Path(args.workdir)))


def _registry(args: argparse.Namespace) -> None:
    from ..models.registry import ModelRegistry

    registry = ModelRegistry(args.registry)
    registry.check()
    if args.action == "rollback":
        if not args.version:
            raise UsageError("registry rollback needs the version to point latest at, e.g. v0002")
        registry.rollback(args.version)
    latest = registry.latest()
    print(f"{registry.root}: latest -> {latest.name if latest else 'none'}")
    for record in registry.history():
        if record.get("rollback"):
            print(f"  {record['time']}  rollback to {record['version']}")
        else:
            print(f"  {record['time']}  {record.get('version') or '-':<6} {record['reason']}")


def _schema(args: argparse.Namespace) -> None:
    import json

    from ..spec.reference import json_schema, markdown

    text = markdown() if args.markdown else json.dumps(json_schema(), indent=2) + "\n"
    if args.out is None:
        print(text, end="")
        return
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


def _explain(args: argparse.Namespace) -> None:
    from ..spec.reference import explain

    print(explain(args.setting))


def _methods(args: argparse.Namespace) -> None:
    from ..spec.reference import methods

    print(methods(args.method))


def register_run(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("run", help="run a pipeline spec, skipping up-to-date stages")
    add_spec_arguments(parser)
    parser.add_argument(
        "--if-changed",
        action="store_true",
        help="exit 0 without work when nothing changed since the last successful run",
    )
    parser.set_defaults(handler=_run)


def register_plan(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "plan", help="check the data and the cluster, then print per stage: run or skip, and why"
    )
    add_spec_arguments(parser)
    parser.set_defaults(handler=_plan)


def register_validate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("validate", help="check a spec without running anything")
    add_spec_arguments(parser)
    parser.set_defaults(handler=_validate)


def register_registry(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "registry", help="show a model registry's history, or point latest at an earlier version"
    )
    parser.add_argument(
        "action", choices=["show", "rollback"], help="show its history, or roll latest back"
    )
    parser.add_argument("registry", help="registry folder")
    parser.add_argument("version", nargs="?", help="for rollback: the version, e.g. v0002")
    parser.set_defaults(handler=_registry)


def register_status(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "status", help="print a table of a workdir's stages: the latest attempt of each"
    )
    parser.add_argument("workdir", help="the spec's workdir")
    parser.set_defaults(handler=_status)


def register_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="write <workdir>/report.html with plots")
    parser.add_argument("workdir", help="the spec's workdir")
    parser.set_defaults(handler=_report)


def register_schema(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "schema",
        help="the JSON Schema of a spec, for editors (or docs/settings.md with --markdown)",
    )
    parser.add_argument("--markdown", action="store_true", help="the settings reference")
    parser.add_argument("--out", help="write to this file instead of printing")
    parser.set_defaults(handler=_schema)


def register_explain(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "explain",
        help="a setting's type, default, bounds and meaning, e.g. pretrain.global_batch_size",
    )
    parser.add_argument(
        "setting",
        help="STAGE_TYPE[.FIELD[.FIELD]] (pretrain.loss.lambd), spec.FIELD (spec.workdir), or "
        "METHOD[.loss[.OPTION]] (vicreg.loss.sim_coeff)",
    )
    parser.set_defaults(handler=_explain)


def register_methods(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "methods", help="the methods with their defaults, view preset and loss options"
    )
    parser.add_argument("method", nargs="?", help="only this method, e.g. vicreg")
    parser.set_defaults(handler=_methods)


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
    register_job,
    register_schema,
    register_explain,
    register_methods,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe", description="Self-supervised pretraining pipelines."
    )
    parser.add_argument("--version", action="version", version=f"sslpipe {sslpipe.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(commands)
    for command in (parser, *commands.choices.values()):
        add_output_options(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    with handle_stop_signals():  # SIGINT and SIGTERM alike, from here to the end
        try:
            args = build_parser().parse_args(argv)
        except KeyboardInterrupt as interrupt:
            return _interrupted(interrupt, None)
        try:
            return _run_command(args)
        except KeyboardInterrupt as interrupt:
            return _interrupted(interrupt, _AFTER_INTERRUPT.get(args.command))


def _run_command(args: argparse.Namespace) -> int:
    debug = getattr(args, "debug", False)
    from ..run.ray_runtime import set_verbose

    set_verbose(getattr(args, "verbose", False))
    try:
        args.handler(args)
    except Exception as error:
        if debug:
            traceback.print_exc()
        if isinstance(error, SpecError):
            print(error, file=sys.stderr)
            return error.exit_code
        if isinstance(error, UserError):
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
        # Nothing above foresaw it: still one line; the traceback with --debug.
        hint = "" if debug else " (--debug prints the traceback)"
        print(f"error: {one_line(error)}{hint}", file=sys.stderr)
        return ENVIRONMENT_EXIT
    return 0


def _interrupted(interrupt: KeyboardInterrupt, then: str | None) -> int:
    """One line: the signal, where it stopped the command, and what it left."""
    where = f": {interrupt}" if str(interrupt) else ""
    after = f"; {then}" if then else ""
    print(f"interrupted by {stop_requested() or 'SIGINT'}{where}{after}", file=sys.stderr)
    return INTERRUPTED_EXIT
