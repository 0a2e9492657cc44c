"""Is a lock file held? One question the run locks (runbook.lockfile) and the WAL hot path (steps.wal.fast) both
ask, answered with the standard library alone: the hot path imports this and nothing heavier."""

from __future__ import annotations

import fcntl
import os


def is_held(path: str | os.PathLike[str]) -> bool:
    """Does a process hold this lock now? (a shared flock tried and released at once; no file: no)"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the shared lock
    return False
