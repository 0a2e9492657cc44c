"""runbook.lockfile.LockFile: take or refuse naming the holder, wait then take or refuse, the holder read by
another process, and the kernel letting go when the holder is killed (real child processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import Exit, LockHeld
from runbook.lockfile import LockFile
from tests.conftest import ROOT

HOLDER = """
import sys, time
from runbook.lockfile import LockFile
lock = LockFile(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
print("released", flush=True)
time.sleep(60)
"""


class Holding:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Any]:
    """Start a child process that takes the lock at a path and lets go after `hold_s` seconds."""
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path, hold_s: float = 60.0) -> Holding:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(hold_s)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        h = Holding(p)
        assert h.readline() == "held"
        return h

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


class Recording(LockFile):
    def __init__(self, path: Path, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.waits: list[tuple[dict[str, Any] | None, float]] = []

    def waiting(self, holder: dict[str, Any] | None, wait: float) -> None:
        self.waits.append((holder, wait))


def test_a_held_lock_refuses_at_once_naming_its_holder(tmp_path: Path, holder: Any) -> None:
    path = tmp_path / "x.lock"
    h = holder(path)
    lock = Recording(path)
    t0 = time.monotonic()
    with pytest.raises(LockHeld) as err:
        lock.acquire()
    assert time.monotonic() - t0 < 0.5 and lock.waits == []  # no wait asked: no waiting
    assert err.value.exit_code == Exit.LOCKED
    assert f"pid {h.pid} " in str(err.value) and f"@{socket.gethostname()})" in str(err.value)
    assert not lock.try_acquire() and lock.seen is not None and lock.seen["pid"] == h.pid
    assert not lock.held


def test_wait_then_take_when_the_holder_lets_go_within_the_wait(tmp_path: Path, holder: Any) -> None:
    path = tmp_path / "x.lock"
    h = holder(path, hold_s=0.6)
    lock = Recording(path, wait=10)
    t0 = time.monotonic()
    with lock:
        waited = time.monotonic() - t0
        assert lock.held and h.readline() == "released"
        assert LockFile.read_holder(path)["pid"] == os.getpid()  # type: ignore[index]
    assert 0.2 < waited < 5
    assert len(lock.waits) == 1 and lock.waits[0][0]["pid"] == h.pid and lock.waits[0][1] == 10  # type: ignore[index]
    assert not lock.held and not LockFile.is_held(path)


def test_wait_then_refuse_when_the_holder_keeps_it(tmp_path: Path, holder: Any) -> None:
    path = tmp_path / "x.lock"
    h = holder(path)
    lock = Recording(path)
    t0 = time.monotonic()
    with pytest.raises(LockHeld) as err:
        lock.acquire(wait=0.5)
    assert 0.5 <= time.monotonic() - t0 < 2
    assert f"pid {h.pid} " in str(err.value) and "waited 0.5 s, refusing" in str(err.value)
    assert len(lock.waits) == 1 and not lock.held


def test_the_holder_is_readable_by_another_process(tmp_path: Path, holder: Any) -> None:
    path = tmp_path / "x.lock"
    h = holder(path)
    seen = LockFile.read_holder(path)
    assert seen is not None and seen["pid"] == h.pid and seen["host"] == socket.gethostname()
    assert {"pid", "user", "host", "since"} <= set(seen) and LockFile.is_held(path)
    # a third process, holding nothing, reads the same
    code = "import sys, json; from runbook.lockfile import LockFile; print(json.dumps(LockFile.read_holder(sys.argv[1])))"
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == seen
    assert LockFile.read_holder(tmp_path / "none.lock") is None and not LockFile.is_held(tmp_path / "none.lock")


def test_a_killed_holder_leaves_no_lock(tmp_path: Path, holder: Any) -> None:
    path = tmp_path / "x.lock"
    h = holder(path)
    os.kill(h.pid, signal.SIGKILL)
    h.proc.wait()
    assert not LockFile.is_held(path)
    assert LockFile.read_holder(path)["pid"] == h.pid  # type: ignore[index]  # its record outlives it ...
    lock = LockFile(path)
    lock.acquire()  # ... but not its lock
    assert LockFile.read_holder(path)["pid"] == os.getpid()  # type: ignore[index]
    lock.release()


def test_one_process_opening_it_twice_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "x.lock"
    first = LockFile(path)
    with pytest.raises(FileNotFoundError):  # no dir_mode: the directory must exist
        first.acquire()

    class Made(LockFile):
        dir_mode = 0o750
        file_mode = 0o640

    umask = os.umask(0)
    os.umask(umask)
    with Made(path) as first:
        assert first.held and path.stat().st_mode & 0o777 == 0o640 & ~umask
        assert path.parent.stat().st_mode & 0o777 == 0o750 & ~umask
        assert not Made(path).try_acquire()
        with pytest.raises(RuntimeError):
            first.acquire()
    assert not first.held
    first.release()  # again: nothing


def test_a_claim_refused_in_taken_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"pid": 1, "claim": "mine"}))

    class Claimed(LockFile):
        def taken(self, previous: dict[str, Any] | None) -> None:
            if previous and previous.get("claim"):
                raise LockHeld(f"claimed by {previous['pid']}")

    lock = Claimed(path)
    with pytest.raises(LockHeld, match="claimed by 1"):
        lock.acquire()
    assert not lock.held and not LockFile.is_held(path)
    assert json.loads(path.read_text()) == {"pid": 1, "claim": "mine"}


def test_a_record_being_written_reads_as_no_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    for raw in (b"", b'{"pid": 12', b"[1, 2]", b"\xff\xfe"):
        path.write_bytes(raw)
        assert LockFile.read_holder(path) is None
    assert LockFile(path).describe(None) == "another process"


def test_a_planted_symlink_or_directory_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """Hostile input: a lock in a shared directory whose name another user made a link to a file root owns
    would have its target truncated when the holder writes its record."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "x.lock"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        LockFile(link).acquire()
    assert victim.read_text() == "precious\n"
    (tmp_path / "d.lock").mkdir()
    with pytest.raises(OSError):
        LockFile(tmp_path / "d.lock").acquire()


def test_a_planted_symlink_at_the_sandbox_lock_stops_demo_before_anything(tmp_path: Path) -> None:
    from runbook.errors import RunbookError
    from steps.sandbox.lock import SandboxLock, lock_path

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    lock_path(tmp_path / "sandbox").symlink_to(victim)
    with pytest.raises(RunbookError, match="symbolic link"):
        SandboxLock(tmp_path / "sandbox").acquire()
    assert victim.read_text() == "precious\n" and not (tmp_path / "sandbox").exists()
