"""runbook.watching.LocalEventSource: a journal written by another process is followed event by event (a line
is returned only once complete), the run's end is seen, a driver whose process is gone is reported silent, and
the watcher takes no lock and writes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runbook.clock import FrozenClock
from runbook.errors import JournalError, RunbookError
from runbook.journal import Journal, read_journal
from runbook.lock import lock_name
from runbook.watching import LocalEventSource, resolve_run_id
from tests.support.watched import tree

RUN_ID = "20261125T031000Z-restore-latest-ab12"
RUNBOOK = "AssetFlow PostgreSQL disaster recovery"
TARGET = "db1:5432/assetflow_prod"

# The driver: takes the run lock as `runbook run` does, then copies the prepared journal's bytes into the run
# directory on command ("N": N more bytes), so the test decides where a write stops.
DRIVER = """
import os, socket, sys
from pathlib import Path
from runbook.lock import Holder, RunLock
state, run_id, source = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).read_bytes()
h = Holder(run_id=run_id, user="alice", host=socket.gethostname(), pid=os.getpid(), since="2026-11-25T03:10:00+00:00",
           target=sys.argv[5])
RunLock.take(state, sys.argv[4], sys.argv[5], h, run_closed=lambda r: False)
fd = os.open(state / "runs" / run_id / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
pos = 0
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    os.write(fd, source[pos:pos + n]); os.fsync(fd)
    pos += n
    print("wrote", pos, flush=True)
"""


def _prepared(tmp_path: Path, *, finished: bool = True) -> bytes:
    """A whole journal, as runbook.journal writes it, in a scratch file."""
    j = Journal(tmp_path / "scratch.jsonl", FrozenClock(datetime(2026, 11, 25, 3, 10, tzinfo=UTC)))
    j.append("run-started", run_id=RUN_ID, runbook={"name": RUNBOOK, "path": "x", "version": 1},
             scenario="restore-latest", mode="drill", target=TARGET, incident_start="2026-11-25T03:00:00.000+00:00",
             data_lost_at="2026-11-25T03:00:00.000+00:00", operator={"user": "alice", "host": "h", "pid": 1},
             params={}, targets={"rto_s": 3600, "rpo_s": 300}, steps=["isolate", "restore"])
    j.append("step-awaiting", step="isolate", command="true", kind="run")
    j.append("step-started", step="isolate", attempt=1, command="true")
    j.append("step-finished", step="isolate", attempt=1, status="succeeded", exit_code=0, duration_s=1.0)
    if finished:
        j.append("run-finished", status="completed", detail="")
    j.close()
    return (tmp_path / "scratch.jsonl").read_bytes()


class Driver:
    def __init__(self, state_dir: Path, source: Path) -> None:
        (state_dir / "runs" / RUN_ID).mkdir(parents=True)
        self.p = subprocess.Popen([sys.executable, "-c", DRIVER, str(state_dir), RUN_ID, str(source), RUNBOOK, TARGET],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline().strip()

    def write(self, n: int) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        assert self._line().startswith("wrote")

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()


@pytest.fixture
def driven(state_dir: Path, tmp_path: Path) -> Any:
    data = _prepared(tmp_path)
    (tmp_path / "source.jsonl").write_bytes(data)
    d = Driver(state_dir, tmp_path / "source.jsonl")
    yield d, data
    if d.p.poll() is None:
        d.kill()


def test_follows_another_process_event_by_event_and_waits_for_whole_lines(state_dir: Path, driven: Any) -> None:
    driver, data = driven
    lines = data.split(b"\n")[:-1]
    expected = read_journal_from(data, state_dir)
    src = LocalEventSource(state_dir, RUN_ID)
    assert src.poll() == [] and src.describe() == f"run {RUN_ID} in {state_dir / 'runs' / RUN_ID} (local)"
    driver.write(len(lines[0]) + 1)
    assert src.poll() == expected[:1]
    assert src.status().silent_s is None and not src.status().ended
    half = len(lines[1]) // 2
    driver.write(half)  # the driver is in the middle of a line
    assert src.poll() == []
    assert src.poll() == []
    driver.write(len(lines[1]) + 1 - half)
    assert src.poll() == [expected[1]]
    driver.write(len(lines[2]) + 1 + len(lines[3]) + 1 + 7)  # two whole lines and the start of a third
    assert src.poll() == expected[2:4]
    assert not src.status().ended and src.status().silent_s is None
    driver.write(len(data) - sum(len(line) + 1 for line in lines[:4]) - 7)
    assert src.poll() == expected[4:]
    assert src.status().ended and src.status().silent_s is None
    assert src.poll() == []


def read_journal_from(data: bytes, state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "expected.jsonl"
    path.write_bytes(data)
    events = read_journal(path).events
    path.unlink()
    return events


def test_a_dead_driver_is_reported_silent_and_the_watcher_changes_nothing(state_dir: Path, driven: Any) -> None:
    driver, data = driven
    lines = data.split(b"\n")[:-1]
    driver.write(sum(len(line) + 1 for line in lines[:3]))  # started, not finished
    before = tree(state_dir)
    clock = FrozenClock(datetime(2026, 11, 25, 3, 10, tzinfo=UTC))  # the journal's events were written then
    src = LocalEventSource(state_dir, RUN_ID, clock=clock)
    assert [e["type"] for e in src.poll()] == ["run-started", "step-awaiting", "step-started"]
    assert src.status().silent_s is None
    lock = state_dir / "locks" / lock_name(RUNBOOK, TARGET)
    assert src.lock_path() == lock
    driver.kill()  # the driver's host process dies: its claim stays in the lock file, its pid is gone
    clock.advance(90)
    status = src.status()
    assert not status.ended and status.silent_s == 90
    assert status.last_heard is not None and f"pid {driver.p.pid}" in status.note and "gone" in status.note
    assert src.poll() == []
    assert tree(state_dir) == before  # nothing written, no mode or time changed, no lock file touched
    assert not _pid_holds_a_lock_on(lock)


def _pid_holds_a_lock_on(path: Path) -> bool:
    """Does this process hold any flock on `path`? (/proc/locks lists every lock with its pid and inode)"""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return any(f" {os.getpid()} " in line and f":{ino} " in line for line in f)


def test_a_closed_lock_for_another_run_means_the_driver_left(state_dir: Path, tmp_path: Path) -> None:
    data = _prepared(tmp_path, finished=False)
    rdir = state_dir / "runs" / RUN_ID
    rdir.mkdir(parents=True)
    (rdir / "journal.jsonl").write_bytes(data)
    src = LocalEventSource(state_dir, RUN_ID)
    assert len(src.poll()) == 4
    status = src.status()  # no lock file at all: nobody drives the run
    assert status.silent_s is not None and "no longer held" in status.note


def test_an_edited_line_is_refused(state_dir: Path, tmp_path: Path) -> None:
    data = _prepared(tmp_path).replace(b'"exit_code":0', b'"exit_code":1')
    rdir = state_dir / "runs" / RUN_ID
    rdir.mkdir(parents=True)
    (rdir / "journal.jsonl").write_bytes(data)
    with pytest.raises(JournalError, match=r"journal.jsonl:4: this line was changed"):
        LocalEventSource(state_dir, RUN_ID).poll()


def test_run_ids_by_prefix(state_dir: Path) -> None:
    for rid in ("20261125T0310Z-a-1111", "20261125T0310Z-a-2222", "20261126T0900Z-b-3333"):
        (state_dir / "runs" / rid).mkdir(parents=True)
        (state_dir / "runs" / rid / "journal.jsonl").write_text("")
    assert resolve_run_id(state_dir, "20261126") == "20261126T0900Z-b-3333"
    assert resolve_run_id(state_dir, "20261125T0310Z-a-1111") == "20261125T0310Z-a-1111"
    with pytest.raises(RunbookError, match="names 2 runs: 20261125T0310Z-a-1111, 20261125T0310Z-a-2222"):
        resolve_run_id(state_dir, "20261125")
    with pytest.raises(RunbookError, match="no run nope under") as err:
        resolve_run_id(state_dir, "nope")
    assert err.value.exit_code == 3 and "runbook runs" in str(err.value)
    with pytest.raises(RunbookError, match="not a run id"):
        resolve_run_id(state_dir, "../x")
    with pytest.raises(RunbookError, match="no run"):
        LocalEventSource(state_dir, "nope")


def test_a_watcher_folds_the_journal_into_the_state_the_driver_resumes_from(state_dir: Path, tmp_path: Path) -> None:
    """The watcher's state is runbook.state's fold of the same events: what `resume` rebuilds, field for field."""
    from runbook.state import load_state
    from runbook.watching import WatchedRun

    data = _prepared(tmp_path)
    rdir = state_dir / "runs" / RUN_ID
    rdir.mkdir(parents=True)
    lines = data.split(b"\n")[:-1]
    (rdir / "journal.jsonl").write_bytes(b"".join(line + b"\n" for line in lines[:3]))
    view = WatchedRun(LocalEventSource(state_dir, RUN_ID), run_id=RUN_ID)
    assert len(view.update()) == 3
    assert view.state == load_state(state_dir, RUN_ID)
    assert view.state.steps["isolate"].status == "running" and view.driver is not None
    assert view.driver.describe() == "alice@h"
    (rdir / "journal.jsonl").write_bytes(data)
    assert len(view.update()) == 2
    assert view.state == load_state(state_dir, RUN_ID) and view.state.status == "completed"
    assert view.last_status.ended
    assert view.ctx.runbook.step("restore").display_title == "restore"  # no runbook copy: steps by their ids


def test_a_rehearsal_takes_no_lock_and_its_driver_is_the_process_that_opened_it(state_dir: Path, tmp_path: Path) -> None:
    import socket
    import sys

    rdir = state_dir / "runs" / RUN_ID
    rdir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    j = Journal(rdir / "journal.jsonl", FrozenClock(datetime(2026, 11, 25, 3, 10, tzinfo=UTC)))
    me = {"user": "alice", "host": socket.gethostname(), "pid": os.getpid()}
    j.append("run-started", run_id=RUN_ID, runbook={"name": RUNBOOK}, scenario="s", mode="rehearsal", target=TARGET,
             operator={**me, "pid": gone.pid}, steps=["a"])
    src = LocalEventSource(state_dir, RUN_ID)
    src.poll()
    assert src.lock_path() is None
    status = src.status()
    assert status.silent_s is not None and f"pid {gone.pid}" in status.note  # the process that started it is gone
    j.append("run-resumed", operator=me, warnings=[])  # resumed by a live process
    src.poll()
    assert src.status().silent_s is None
    j.close()
