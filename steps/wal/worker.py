"""The lock every long-lived WAL worker holds for its life: the asynchronous uploader and the read-ahead
(steps.wal.spool), the sealer (steps.wal.ledger)."""

from __future__ import annotations

import os
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
