"""The error of point-in-time recovery: what the `pitr` action (and verify-backup, through the parts of
steps.pitr it reuses) raises when a recovery cannot go on. A RunbookError: a message and a hint."""

from __future__ import annotations

from runbook.errors import RunbookError


class PitrError(RunbookError):
    title = "pitr"
