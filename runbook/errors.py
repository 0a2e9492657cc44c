"""The one error family of the product, and the one table of exit codes.

Every error a user can cause (a bad file, a wrong parameter, a refused lock) is a `RunbookError`:
the CLI prints its message on stderr without a traceback and exits with its `exit_code`, one of `Exit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Exit(IntEnum):
    """What every subcommand's exit code means (docs/commands.md, "Exit codes", is this table).

    The WAL commands keep PostgreSQL's contracts instead: `wal-push` 0 stored, 1..125 retry; `wal-fetch`
    0 restored, 1 no such file, 126 abort the recovery (steps.wal)."""

    OK = 0
    WARNING = 1  # done, not clean: a warning, or done in part
    RUN_FAILED = 1  # the same code (an alias): `run`, `resume`, `demo` ended with the run failed or aborted
    FAILED = 2  # what the command makes or proves is bad: published nowhere, verification failed, a red check
    CANNOT_RUN = 3  # nothing was done: a usage error, a missing, invalid or wrong kind of file, no repository usable
    LEFT_OPEN = 4  # the run stopped and stays open: `runbook resume RUN_ID`
    LOCKED = 5  # another process holds the lock (a run, a backup, a verification, the sandbox)
    INTERRUPTED = 130  # Ctrl-C (and SIGTERM for verify-backup); an interrupted backup is FAILED: published nowhere
    BROKEN_PIPE = 141  # the reader of standard output went away


class RunbookError(Exception):
    """An error the operator can act on. `str(err)` says what is wrong and what to do."""

    exit_code: int = Exit.CANNOT_RUN
    title = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


@dataclass(frozen=True, order=True)
class Problem:
    """One problem found in a file, printed as `FILE:LINE:COL: message` (line and column 1-based)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class InvalidFile(RunbookError):
    """A runbook, profile or repository file with one or more problems; nothing runs."""

    exit_code = Exit.CANNOT_RUN
    title = "invalid file"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(RunbookError):
    """A wrong command-line value: a bad --set, an unknown scenario, a value failing its pattern."""

    exit_code = Exit.CANNOT_RUN
    title = "usage"


class SecretsError(RunbookError):
    """The secrets file is missing, unreadable, or readable by group/others."""

    exit_code = Exit.CANNOT_RUN
    title = "secrets"


class LockHeld(RunbookError):
    """Another run holds the lock for this runbook and target."""

    exit_code = Exit.LOCKED
    title = "locked"


class JournalError(RunbookError):
    """A journal that cannot be trusted: a line edited in the middle, a broken chain."""

    exit_code = Exit.CANNOT_RUN
    title = "journal"
