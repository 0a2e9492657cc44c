"""The local run lock: a live holder refuses, a crashed run's claim passes only to resume or --break-lock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runbook.errors import LockHeld
from runbook.lock import Holder, RunLock


def _holder(run_id: str, pid: int | None = None) -> Holder:
    return Holder(run_id=run_id, user="alice", host=socket.gethostname(), pid=pid or os.getpid(),
                  since="2026-11-25T03:00:00+00:00", target="db:5432/assetflow_prod")


def test_live_holder_in_another_process_refuses(state_dir: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from runbook.lock import Holder, RunLock\n"
        f"h = Holder('run-A', 'alice', 'h1', __import__('os').getpid(), 'since', 't')\n"
        f"RunLock.take(Path({str(state_dir)!r}), 'rb', 't', h, run_closed=lambda r: False)\n"
        "print('held', flush=True); time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld) as err:
            RunLock.take(state_dir, "rb", "t", _holder("run-B"), run_closed=lambda r: False)
        msg = str(err.value)
        assert "run-A" in msg and "alice@h1" in msg and f"pid {p.pid}" in msg and "since" in msg
    finally:
        p.kill()
        p.wait()


def test_crashed_unclosed_run_keeps_its_claim(state_dir: Path) -> None:
    lock, _ = RunLock.take(state_dir, "rb", "t", _holder("run-A", pid=999999), run_closed=lambda r: False)
    lock.release(closed=False)  # the runner died / quit: the run is not closed
    with pytest.raises(LockHeld) as err:
        RunLock.take(state_dir, "rb", "t", _holder("run-B"), run_closed=lambda r: False)
    assert "runbook resume run-A" in str(err.value) and "--break-lock" in str(err.value)
    # resume of that run gets it back
    again, replaced = RunLock.take(state_dir, "rb", "t", _holder("run-A"), run_closed=lambda r: False)
    assert replaced is None
    again.release(closed=False)
    # --break-lock takes it over and says from whom
    taken, replaced = RunLock.take(state_dir, "rb", "t", _holder("run-B"), run_closed=lambda r: False,
                                      break_lock=True)
    assert replaced is not None and replaced.run_id == "run-A"
    taken.release(closed=True)


def test_closed_run_frees_the_target(state_dir: Path) -> None:
    lock, _ = RunLock.take(state_dir, "rb", "t", _holder("run-A"), run_closed=lambda r: False)
    lock.release(closed=True)
    nxt, replaced = RunLock.take(state_dir, "rb", "t", _holder("run-B"), run_closed=lambda r: False)
    assert replaced is None
    nxt.release(closed=True)


def test_other_target_is_independent(state_dir: Path) -> None:
    a, _ = RunLock.take(state_dir, "rb", "db1:5432/x", _holder("run-A"), run_closed=lambda r: False)
    b, _ = RunLock.take(state_dir, "rb", "db2:5432/x", _holder("run-B"), run_closed=lambda r: False)
    a.release(closed=True)
    b.release(closed=True)
    time.sleep(0)
