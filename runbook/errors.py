"""The one error family of the product.

Every error a user can cause (a bad file, a wrong parameter, a refused lock) is a `RunbookError`:
the CLI prints its message on stderr without a traceback and exits with its `exit_code`.
"""

from __future__ import annotations

from dataclasses import dataclass


class RunbookError(Exception):
    """An error the operator can act on. `str(err)` says what is wrong and what to do."""

    exit_code = 1
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

    exit_code = 2
    title = "invalid file"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(RunbookError):
    """A wrong command-line value: a bad --set, an unknown scenario, a value failing its pattern."""

    exit_code = 2
    title = "usage"


class SecretsError(RunbookError):
    """The secrets file is missing, unreadable, or readable by group/others."""

    exit_code = 2
    title = "secrets"


class LockHeld(RunbookError):
    """Another run holds the lock for this runbook and target."""

    exit_code = 3
    title = "locked"


class JournalError(RunbookError):
    """A journal that cannot be trusted: a line edited in the middle, a broken chain."""

    exit_code = 3
    title = "journal"
