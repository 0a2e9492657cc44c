"""The backup lock: two backups of one database never overlap.

An `flock` on `<lock dir>/backup-<target>.lock`, held for the whole backup (released by the kernel when
the process dies, so a crash leaves no stale lock). The file names its holder and remembers the last
backup id taken under it, so that two runs in the same second never get the same id. The default lock
directory is `<local repository>/locks` (one place that root, cron and the `postgres` user all share)
when the local repository is usable, else `<state dir>/locks`.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import socket
from datetime import UTC, datetime
from pathlib import Path

from runbook.errors import LockHeld, RunbookError


def lock_path(lock_dir: Path, target: str) -> Path:
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", target).strip("-")[:60]
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    return lock_dir / f"backup-{slug}-{digest}.lock"


class BackupLock:
    def __init__(self, path: Path, fd: int, last_id: str | None) -> None:
        self.path = path
        self._fd = fd
        self.last_id = last_id

    @classmethod
    def acquire(cls, lock_dir: Path, target: str) -> BackupLock:
        try:
            lock_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            path = lock_path(lock_dir, target)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as e:
            raise RunbookError(f"cannot create the backup lock in {lock_dir}: {e.strerror}",
                               hint="set backup.lock_dir to a directory this user can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} ({holder.get('user')}@{holder.get('host')}) since {holder.get('since')}"
                   if holder else "another process")
            raise LockHeld(f"a backup of {target} is already running: {who}",
                           hint="wait for it to finish; two backups of one database never overlap") from None
        data = _read(fd)
        last = data.get("last_backup_id") if data else None
        return cls(path, fd, last if isinstance(last, str) else None)

    def record(self, backup_id: str) -> None:
        """Write the holder and the id of the backup being taken now."""
        info = {"pid": os.getpid(), "user": getpass.getuser(), "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"), "last_backup_id": backup_id}
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        self.last_id = backup_id

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def _read(fd: int) -> dict[str, object] | None:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw) if raw.strip() else None
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
