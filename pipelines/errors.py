"""User errors: what went wrong and where, printed as one line each, never as a traceback.

Exit codes: 2 when the fix is in the spec or the command line, 1 when it is on the machine
or the cluster (a missing mount, a read-only folder, a busy workdir, too few GPUs).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

SPEC_EXIT, ENVIRONMENT_EXIT = 2, 1


def did_you_mean(value: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` naming the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Problem:
    """One error in a spec: ``FILE:LINE:COL: key.path: message``.

    Problems in a command-line argument have line 0 and name the argument as their file.
    ``exit_code`` is 1 for a problem of the machine that the spec points at (data that is not
    there, a workdir that cannot be written), 2 for a mistake in the spec itself.
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    exit_code: int = SPEC_EXIT

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        path = f"{self.path}: " if self.path else ""
        return f"{where}: {path}{self.message}"


class SpecError(Exception):
    """A spec that cannot run; carries every problem found, in file order.

    Exits 2 if any problem is a mistake in the spec, else 1 (only the machine is at fault).
    """

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column))
        self.exit_code = max((p.exit_code for p in self.problems), default=SPEC_EXIT)
        super().__init__("\n".join(str(p) for p in self.problems))


class UserError(Exception):
    """A run that cannot go on because of its environment (bad data, a missing file, a lock)."""

    exit_code = ENVIRONMENT_EXIT


class UsageError(UserError):
    """A mistake in the command's arguments or the spec found only when it runs."""

    exit_code = SPEC_EXIT


def one_line(error: BaseException) -> str:
    """An error as the command line prints it: a spec's problems or a user error as they are,
    an OSError's file and reason, else the error's type and the first line of its text."""
    if isinstance(error, SpecError | UserError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "no message")
    return f"{type(error).__name__}: {text}"
