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


def stop_workers(spool_dir: Path, timeout: float = 10.0) -> list[int]:
    """Stop every WAL worker of a spool directory (uploader, sealer, read-ahead: each holds one of LOCK_NAMES),
    SIGTERM then, after `timeout`, SIGKILL; returns when none holds its lock any more. For a sandbox rebuild,
    which wipes the repository these workers write into. Returns the pids signalled."""
    from runbook.flockprobe import is_held

    held = [p for p in spool_dir.rglob("*") if p.name in LOCK_NAMES and not p.is_symlink() and p.is_file()
            and is_held(p)] if spool_dir.is_dir() else []
    pids: list[int] = []
    for lock in held:
        record = WorkerLock.read_holder(lock)
        if record is not None and record["pid"] > 1:
            pids.append(record["pid"])
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(is_held(p) for p in held) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not any(is_held(p) for p in held):
            break
    return pids
