"""A run driven by the test itself, for watchers to follow: its journal written through runbook.journal.Journal
and its run lock held through runbook.lock.RunLock (what the engine uses), its steps' output in the supervisor's
record format. The test decides when each event is written, so a watcher can be checked between two of them."""

from __future__ import annotations

import hashlib
import os
import socket
import textwrap
from pathlib import Path
from typing import Any

from runbook.clock import Clock, FrozenClock, iso
from runbook.journal import Journal
from runbook.loader import load_runbook
from runbook.lock import Holder, RunLock, lock_name
from runbook.state import run_dir, step_dir

RUN_ID = "20261125T031000Z-restore-latest-5eed"
OPERATOR = {"user": "oncall", "host": "db-recovery-1", "pid": 4242}

RUNBOOK = """
    version: 1
    name: AssetFlow PostgreSQL DR
    targets: {rto: 2h, rpo: 5m}
    steps:
      - id: tell
        title: Tell stakeholders
        description: Nobody should learn about the outage from their users.
        manual: [Post in the incident channel, Page the service owner]
        expect_duration: 5m
      - id: fetch
        title: Fetch the newest backup
        description: Its time is the **recovery point**.
        run: echo fetched
        expect_duration: 10m
      - id: restore
        title: Restore into the new database
        description: Parallel restore, stopping at the first error.
        run: pg_restore --dbname assetflow_prod --jobs=4 --exit-on-error
        danger: true
        expect_duration: 30m
      - id: verify
        title: Verify
        run: echo verified
        expect_duration: 3m
"""


class HandDriver:
    def __init__(self, state_dir: Path, clock: Clock, *, text: str = RUNBOOK, mode: str = "drill",
                 hold_lock: bool = True) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.rdir = run_dir(state_dir, RUN_ID)
        self.rdir.mkdir(parents=True)
        (self.rdir / "runbook.yaml").write_text(textwrap.dedent(text).lstrip())
        self.runbook = load_runbook(self.rdir / "runbook.yaml")
        self.target = "db1:5432/assetflow_prod"
        self.lock: RunLock | None = None
        if hold_lock:
            holder = Holder(run_id=RUN_ID, user="oncall", host=socket.gethostname(), pid=os.getpid(),
                            since=iso(clock.now()), target=self.target)
            self.lock, _ = RunLock.take(state_dir, self.runbook.name, self.target, holder,
                                        run_closed=lambda run_id: False)
        self.journal = Journal(self.rdir / "journal.jsonl", clock)
        steps = [s.id for s in self.runbook.steps]
        self.journal.append(
            "run-started", run_id=RUN_ID, runbook={"name": self.runbook.name, "path": "runbook.yaml", "version": 1},
            scenario="restore-latest", mode=mode, target=self.target, incident_start="2026-11-25T03:00:00.000+00:00",
            data_lost_at="2026-11-25T03:00:00.000+00:00", operator=OPERATOR, params={}, secrets_keys=[],
            secrets_file="", profile="", targets={"rto_s": 7200.0, "rpo_s": 300.0}, steps=steps,
            tool_version="test", repository="")

    @property
    def lock_path(self) -> Path:
        return self.state_dir / "locks" / lock_name(self.runbook.name, self.target)

    def at(self, minutes: float) -> HandDriver:
        """Move the clock to `minutes` after 03:00 (the incident start)."""
        assert isinstance(self.clock, FrozenClock), "a driver on the real clock writes now"
        now = self.clock.now()
        target = now.replace(hour=3, minute=0, second=0, microsecond=0)
        self.clock.advance((target - now).total_seconds() + minutes * 60)
        return self

    def event(self, type_: str, **data: Any) -> dict[str, Any]:
        return self.journal.append(type_, **data)

    def manual(self, step: str, *, acked: int) -> None:
        self.event("step-awaiting", step=step, command=None, kind="manual")
        for i in range(acked):
            self.event("item-acked", step=step, index=i, item=self.runbook.step(step).manual[i], how="key r")

    def run(self, step: str, command: str, *, attempt: int = 1) -> None:
        self.event("step-awaiting", step=step, command=command, kind="run")
        self.event("step-confirmed", step=step, how="key r in the TUI", typed=False)
        self.event("step-started", step=step, attempt=attempt, command=command)

    def output(self, step: str, *lines: str, attempt: int = 1) -> None:
        d = step_dir(self.rdir, step, attempt)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "output.log", "a") as f:
            f.write("".join(f"{iso(self.clock.now())} O {line}\n" for line in lines))

    def finished(self, step: str, *, status: str = "succeeded", duration_s: float = 60.0, attempt: int = 1,
                 detail: str = "exit 0") -> None:
        self.event("step-finished", step=step, attempt=attempt, status=status, exit_code=0 if status == "succeeded"
                   else 1, duration_s=duration_s, detail=detail)

    def close(self, status: str = "completed") -> None:
        self.event("run-finished", status=status, detail="")
        self.release()

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release(closed=False)
            self.lock = None
        self.journal.close()


def tree(*dirs: Path) -> dict[str, str]:
    """Every file under the directories: its content's digest, mode and modification time."""
    out = {}
    for base in dirs:
        for p in sorted(base.rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {st.st_mode:o} {st.st_mtime_ns}"
    return out


def flocks_on(path: Path) -> int:
    """How many flock locks (any process's) are held on `path` now (/proc/locks: one line per lock)."""
    ino = os.stat(path).st_ino
    dev = os.stat(path).st_dev
    key = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino} "
    with open("/proc/locks") as f:
        return sum(1 for line in f if " FLOCK " in line and key in line)


# ---- a real driver: `runbook run --headless` in its own session ---------------------------------------------

SLOW_RUNBOOK = """
    version: 1
    name: Watched drill
    targets: {rto: 1h}
    steps:
      - id: warm-up
        title: Warm up the standby
        run: "echo warming; sleep 0.3; echo warm"
        confirm: none
      - id: restore
        title: Restore the database
        run: "for i in $(seq 1 STEPS); do echo restored chunk $i; sleep PAUSE; done"
        confirm: none
        expect_duration: 5m
      - id: verify
        title: Verify the rows
        run: "echo verified"
        confirm: none
"""


class RealDriver:
    """`runbook run FILE --headless --yes --mode drill` in a child process of its own session; `stop()` ends it and
    every step process it left (their process groups are in the journal)."""

    def __init__(self, tmp: Path, state_dir: Path, *, chunks: int = 5, pause: float = 0.2) -> None:
        import subprocess
        import sys

        from tests.conftest import ROOT

        self.state_dir = state_dir
        self.runbook = tmp / "watched.yaml"
        text = SLOW_RUNBOOK.replace("STEPS", str(chunks)).replace("PAUSE", str(pause))
        self.runbook.write_text(textwrap.dedent(text).lstrip())
        self.log = open(tmp / "driver.log", "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runbook", "run", str(self.runbook), "--headless", "--yes", "--mode", "drill",
             "--state-dir", str(state_dir)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def run_id(self, timeout: float = 30) -> str:
        import time

        deadline = time.monotonic() + timeout
        runs = self.state_dir / "runs"
        while time.monotonic() < deadline:
            found = [d.name for d in runs.iterdir()] if runs.is_dir() else []
            if found and (runs / found[0] / "journal.jsonl").exists():
                return found[0]
            time.sleep(0.05)
        raise AssertionError("the driver opened no run")

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        import contextlib
        import signal

        from runbook.journal import read_journal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        runs = self.state_dir / "runs"
        for journal in runs.glob("*/journal.jsonl") if runs.is_dir() else []:
            for e in read_journal(journal).events:
                if e["type"] == "step-started":
                    with contextlib.suppress(ProcessLookupError, KeyError, TypeError):
                        os.killpg(e["pgid"], signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError, KeyError, TypeError):
                        os.kill(e["supervisor_pid"], signal.SIGKILL)
        self.log.close()
