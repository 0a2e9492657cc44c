"""The lock every long-lived WAL worker holds for its life: the asynchronous uploader and the read-ahead
(steps.wal.spool), the sealer (steps.wal.ledger)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from runbook.lockfile import LockFile


class WorkerLock(LockFile):
    """One worker per spool: an exclusive flock held for the worker's life (released by the kernel at exit),
    the file naming its pid (a line: `steps.wal.fast.worker_alive` probes the lock, bench/ reads the pid)."""

    def holder_record(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    @classmethod
    def encode(cls, record: dict[str, Any]) -> bytes:
        return f"{record['pid']}\n".encode()

    @classmethod
    def decode(cls, raw: bytes) -> dict[str, Any] | None:
        try:
            return {"pid": int(raw.split()[0])}
        except (ValueError, IndexError):
            return None


LOCK_NAMES = ("push-worker.lock", "seal-worker.lock", ".lock")


def _lock_files(spool_dir: Path) -> list[Path]:
    """The workers' lock files under a spool directory: regular files, found without following a symlink."""
    found = []
    for root, _dirs, files in os.walk(spool_dir):  # os.walk does not descend into symlinked directories
        for name in files:
            p = Path(root, name)
            if name in LOCK_NAMES and p.is_file() and not p.is_symlink():
                found.append(p)
    return found


def _holders(locks: list[Path]) -> set[int]:
    """The pids holding a flock on any of `locks`, as the kernel says (/proc/locks), not as the files say: a lock
    file is the server's user's to write, and root must not signal a pid written into it."""
    keys = set()
    for p in locks:
        with contextlib.suppress(OSError):
            st = p.lstat()
            keys.add(f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}")
    pids = set()
    try:
        with open("/proc/locks") as f:
            for line in f:  # "1: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE 0 EOF"; a waiter has "->" after "1:"
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] in keys and parts[4].isdigit():
                    pids.add(int(parts[4]))
    except OSError:
        pass
    return pids


def stop_workers(spool_dir: Path, timeout: float = 10.0) -> list[int]:
    """Stop every WAL worker of a spool directory (uploader, sealer, read-ahead: each holds one of LOCK_NAMES),
    SIGTERM then, after `timeout`, SIGKILL; returns when none holds its lock any more. For a sandbox rebuild,
    which wipes the repository these workers write into. Returns the pids signalled."""
    locks = _lock_files(spool_dir) if spool_dir.is_dir() else []
    pids = sorted(_holders(locks) - {os.getpid()})
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while (held := _holders(locks)) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not held:
            break
    return pids
