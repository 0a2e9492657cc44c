"""Structured events from an action to the front ends, as JSON lines on `$RUNBOOK_EVENT_FD`.

Without that variable (an action run by hand) events are written to stderr as `[event] {...}`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO


class Events:
    def __init__(self) -> None:
        fd = os.environ.get("RUNBOOK_EVENT_FD")
        self._out: TextIO | None = None
        if fd and fd.isdigit():
            try:
                self._out = os.fdopen(int(fd), "w", buffering=1, closefd=True)
            except OSError:
                self._out = None

    def _emit(self, kind: str, **data: Any) -> None:
        line = json.dumps({"type": kind, **data}, default=str)
        if self._out is not None:
            self._out.write(line + "\n")
        else:
            print(f"[event] {line}", file=sys.stderr, flush=True)

    def progress(self, done: float, total: float | None, unit: str = "", label: str = "") -> None:
        self._emit("progress", done=done, total=total, unit=unit, label=label)

    def check(self, name: str, status: str, hint: str = "") -> None:
        """status: ok | warning | failed"""
        self._emit("check", name=name, status=status, hint=hint)

    def output(self, name: str, value: Any) -> None:
        self._emit("output", name=name, value=value)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def resume_with(sets: str) -> str:
    """The command an operator runs to go on with this run after quitting, with `sets` (`--set K=V`): the run's
    own id and state directory when the engine runs this action (RUNBOOK_RUN_ID, RUNBOOK_RUN_DIR), else RUN_ID."""
    from pathlib import Path

    run_id, run_dir = os.environ.get("RUNBOOK_RUN_ID"), os.environ.get("RUNBOOK_RUN_DIR")
    if run_id and run_dir:
        from runbook.report import resume_command

        return f"{resume_command(run_id, Path(run_dir).parent.parent)} {sets}"
    return f"runbook resume RUN_ID {sets}"
