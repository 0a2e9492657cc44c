"""The local run lock: one active run per runbook and target on this host.

A lock file per target under `<state dir>/locks/`, held with `flock` while a runner lives, and naming its
holder (run id, user, host, pid, since). The file's content outlives the runner: a run that crashed or was
left without closing keeps its claim, which passes only to `resume` of that run or to `--break-lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from runbook.errors import LockHeld


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


class RunLock:
    def __init__(self, path: Path, fd: int, holder: Holder) -> None:
        self.path = path
        self._fd = fd
        self.holder = holder
        self.on_release: list[Callable[[bool], None]] = []  # e.g. the repository's lock object (steps.repository.recovery_lock)

    @classmethod
    def acquire(
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
        locks = state_dir / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        path = locks / lock_name(runbook_name, target)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            previous = _read_holder(fd)
            os.close(fd)
            who = previous.describe() if previous else "another process on this host"
            raise LockHeld(
                f"{runbook_name} on {target} is being run right now: {who}",
                hint="work in that run, or wait until it ends; `runbook runs` lists runs",
            ) from None
        previous = _read_holder(fd)
        replaced: Holder | None = None
        if previous and previous.run_id != holder.run_id and not run_closed(previous.run_id):
            if not break_lock:
                os.close(fd)
                alive = pid_alive(previous.pid) if previous.host == socket.gethostname() else None
                state = "its runner is gone" if alive is False else "it was left open"
                raise LockHeld(
                    f"{runbook_name} on {target} belongs to an unfinished run: {previous.describe()}; {state}",
                    hint=f"continue it with `runbook resume {previous.run_id}`, or take over with --break-lock",
                )
            replaced = previous
        _write_holder(fd, holder)
        return cls(path, fd, holder), replaced

    def release(self, *, closed: bool) -> None:
        """Let go. `closed=True` (the run ended) also clears the claim; otherwise it stays for `resume`."""
        if self._fd < 0:
            return
        if closed:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1
        for fn in self.on_release:
            with contextlib.suppress(Exception):  # releasing never fails a run; the object names its holder
                fn(closed)


def _read_holder(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    if not raw.strip():
        return None
    try:
        return Holder(**json.loads(raw))
    except (ValueError, TypeError):
        return None


def _write_holder(fd: int, holder: Holder) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(asdict(holder)).encode())
    os.fsync(fd)


def pid_alive(pid: int) -> bool:
    """Is a process `pid` running on this host (one of another user's counts)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
