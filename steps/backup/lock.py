"""The backup lock: two backups of one database never overlap.

An `flock` on `<lock dir>/backup-<target>.lock` (a runbook.lockfile.LockFile), held for the whole backup
(released by the kernel when the process dies, so a crash leaves no stale lock). The file names its holder
(pid, user, host, since) and remembers the last backup id taken under it, so that two runs in the same
second never get the same id. The default lock directory is `<local repository>/locks` (one place that
root, cron and the `postgres` user all share) when the local repository is usable, else `<state dir>/locks`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from runbook.errors import LockHeld, RunbookError
from runbook.lockfile import LockFile


def lock_path(lock_dir: Path, target: str) -> Path:
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", target).strip("-")[:60]
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    return lock_dir / f"backup-{slug}-{digest}.lock"


class BackupLock(LockFile):
    """Refuses at once (no wait) while another backup of the target runs."""

    file_mode = 0o640
    dir_mode = 0o750

    def __init__(self, lock_dir: Path, target: str) -> None:
        super().__init__(lock_path(lock_dir, target))
        self.lock_dir = lock_dir
        self.target = target
        self.last_id: str | None = None

    @classmethod
    def take(cls, lock_dir: Path, target: str) -> BackupLock:
        lock = cls(lock_dir, target)
        lock.acquire()
        return lock

    def taken(self, previous: dict[str, Any] | None) -> None:
        last = previous.get("last_backup_id") if previous else None
        self.last_id = last if isinstance(last, str) else None

    def holder_record(self) -> dict[str, Any]:
        info = super().holder_record()
        if self.last_id is not None:
            info["last_backup_id"] = self.last_id
        return info

    def refusal(self, holder: dict[str, Any] | None, wait: float) -> LockHeld:
        return LockHeld(f"a backup of {self.target} is already running: {self.describe(holder)}",
                        hint="wait for it to finish; two backups of one database never overlap")

    def cannot_open(self, error: OSError) -> RunbookError:
        return RunbookError(f"cannot create the backup lock in {self.lock_dir}: {error.strerror}",
                            hint="set backup.lock_dir to a directory this user can write")

    def record(self, backup_id: str) -> None:
        """Write the holder and the id of the backup being taken now."""
        self.last_id = backup_id
        self.write(self.holder_record())
