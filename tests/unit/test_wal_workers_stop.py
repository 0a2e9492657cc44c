"""steps.wal.worker.stop_workers: a sandbox rebuild wipes the repository, and a WAL worker of the last build (the
uploader, the sealer, the read-ahead) may still be writing into it; each is stopped first, found by its lock.
Real child processes holding real locks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from runbook.flockprobe import is_held
from steps.wal.worker import stop_workers

HOLDER = """
import signal, sys, time
from steps.wal.worker import WorkerLock
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
lock = WorkerLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(lock: Path, mode: str = "plain") -> subprocess.Popen[str]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), mode], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).parents[2])
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_every_worker_of_the_spool_is_stopped_and_its_lock_released(tmp_path: Path) -> None:
    locks = [tmp_path / "123" / "push-x" / "push-worker.lock", tmp_path / "123" / "seal-s3" / "seal-worker.lock",
             tmp_path / "123" / "in-abc" / ".lock"]
    procs = [_holder(p) for p in locks]
    try:
        pids = stop_workers(tmp_path, timeout=5)
        assert sorted(pids) == sorted(p.pid for p in procs)
        for p in procs:
            assert p.wait(timeout=5) is not None
        assert not any(is_held(p) for p in locks)
    finally:
        for p in procs:
            p.kill()


def test_a_worker_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    lock = tmp_path / "9" / "push-worker.lock"
    p = _holder(lock, "stubborn")
    try:
        t0 = time.monotonic()
        assert stop_workers(tmp_path, timeout=0.5) == [p.pid]
        assert p.wait(timeout=5) == -9
        assert 0.5 <= time.monotonic() - t0 < 5
    finally:
        p.kill()


def test_released_locks_and_other_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "push-worker.lock").write_text("1\n")  # init's pid, no holder: never signalled
    (tmp_path / "1" / "other.lock").write_text("2\n")
    assert stop_workers(tmp_path, timeout=0.2) == []
    assert stop_workers(tmp_path / "missing") == []


def test_the_pid_comes_from_the_kernel_not_from_the_lock_file(tmp_path: Path) -> None:
    """A lock file is the server's user's to write: a pid planted in it is never signalled; the process that
    really holds the lock is. A directory symlinked into the spool is not followed."""
    lock = tmp_path / "1" / "push-worker.lock"
    holder = _holder(lock)
    victim = subprocess.Popen(["sleep", "60"])
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside = _holder(elsewhere / "push-worker.lock")
    (tmp_path / "2").symlink_to(elsewhere, target_is_directory=True)
    try:
        lock.write_text(f"{victim.pid}\n")
        assert stop_workers(tmp_path, timeout=5) == [holder.pid]
        assert holder.wait(timeout=5) is not None
        assert victim.poll() is None and outside.poll() is None
    finally:
        for p in (holder, victim, outside):
            p.kill()
