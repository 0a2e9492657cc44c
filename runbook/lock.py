"""The local run lock: one active run per runbook and target on this host.

A lock file per target under `<state dir>/locks/` (a runbook.lockfile.LockFile), held with `flock` while a
runner lives, and naming its holder (run id, user, host, pid, since). The file's content outlives the
runner: a run that crashed or was left without closing keeps its claim, which passes only to `resume` of
that run or to `--break-lock`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from runbook.errors import LockHeld
from runbook.lockfile import LockFile


@dataclass
class Holder:
    run_id: str
    user: str
    host: str
    pid: int
    since: str
    target: str

    def describe(self) -> str:
        return f"run {self.run_id} by {self.user}@{self.host} (pid {self.pid}) since {self.since}"


def lock_name(runbook_name: str, target: str) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", f"{runbook_name}-{target}").strip("-")[:60]
    digest = hashlib.sha256(f"{runbook_name}\0{target}".encode()).hexdigest()[:12]
    return f"{slug}-{digest}.lock"


class RunLock(LockFile):
    """The run lock of one runbook and target: refuses at once (no wait) while a runner holds it, and while
    the file names an unfinished run (see the module's docstring)."""

    dir_mode = 0o777  # as `mkdir` makes it (the umask applies)
    fsync = True  # the claim must survive a crash of the host too

    def __init__(self, path: Path, holder: Holder, *, what: str = "",
                 run_closed: Callable[[str], bool] = lambda run_id: False, break_lock: bool = False) -> None:
        super().__init__(path)
        self.path: Path = path
        self.holder = holder
        self.what = what or path.name
        self.run_closed = run_closed
        self.break_lock = break_lock
        self.replaced: Holder | None = None
        self.on_release: list[Callable[[bool], None]] = []  # e.g. the repository's lock object (steps.repository.recovery_lock)

    @classmethod
    def take(
        cls,
        state_dir: Path,
        runbook_name: str,
        target: str,
        holder: Holder,
        *,
        run_closed: Callable[[str], bool],
        break_lock: bool = False,
    ) -> tuple[RunLock, Holder | None]:
        """Take the lock for `holder`. Returns the lock and the previous holder it replaced, if any.

        `run_closed(run_id)` says whether a run recorded in the file has ended (then its claim is void).
        """
        lock = cls(state_dir / "locks" / lock_name(runbook_name, target), holder, what=f"{runbook_name} on {target}",
                   run_closed=run_closed, break_lock=break_lock)
        lock.acquire()
        return lock, lock.replaced

    def refusal(self, holder: dict[str, Any] | None, wait: float) -> LockHeld:
        previous = _as_holder(holder)
        who = previous.describe() if previous else "another process on this host"
        return LockHeld(f"{self.what} is being run right now: {who}",
                        hint="work in that run, or wait until it ends; `runbook runs` lists runs")

    def taken(self, previous: dict[str, Any] | None) -> None:
        """A claim left by a run that has not ended passes only to that run (resume) or to --break-lock."""
        claim = _as_holder(previous)
        if not claim or claim.run_id == self.holder.run_id or self.run_closed(claim.run_id):
            return
        if not self.break_lock:
            alive = pid_alive(claim.pid) if claim.host == socket.gethostname() else None
            state = "its runner is gone" if alive is False else "it was left open"
            raise LockHeld(
                f"{self.what} belongs to an unfinished run: {claim.describe()}; {state}",
                hint=f"continue it with `runbook resume {claim.run_id}`, or take over with --break-lock",
            )
        self.replaced = claim

    def holder_record(self) -> dict[str, Any]:
        return asdict(self.holder)

    def release(self, *, closed: bool = False) -> None:
        """Let go. `closed=True` (the run ended) also clears the claim; otherwise it stays for `resume`."""
        if not self.held:
            return
        if closed:
            self.clear()
        super().release()
        for fn in self.on_release:
            with contextlib.suppress(Exception):  # releasing never fails a run; the object names its holder
                fn(closed)


def _as_holder(record: dict[str, Any] | None) -> Holder | None:
    if not record:
        return None
    try:
        return Holder(**record)
    except TypeError:
        return None


def pid_alive(pid: int) -> bool:
    """Is a process `pid` running on this host (one of another user's counts)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
