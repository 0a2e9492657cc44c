"""The front-end side of step execution: launch a supervised step, follow it, cancel it, read its result.

Each step runs under `runbook.supervisor` in a session of its own, so it outlives the front end
(the TUI, its SSH session). Everything the step produces is read from files in its step directory,
which the supervisor alone writes (see `runbook.supervisor` for the formats): a front end can die,
`attach()` later, and tell a step that is still running from one that finished while nobody watched,
and from one that is lost (its session was killed: nobody can record a result).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from runbook.durations import short_duration
from runbook.supervisor import (
    EVENTS_FILE,
    OUTPUT_FILE,
    RESULT_FILE,
    SUPERVISOR_FILE,
    group_members,
    start_ticks,
)

__all__ = ["Line", "Pids", "StepLaunch", "StepProcess", "StepResult", "read_output"]

POLL_S = 0.05
LAUNCH_TIMEOUT_S = 5.0
MAX_BATCH_BYTES = 192 << 10  # ~6k records: parsed and drawn in a few ms, so keys stay responsive
SUPERVISOR_ERR = "supervisor.err"
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR")
_STREAMS: dict[str, tuple[Literal["out", "err"], bool]] = {
    "O": ("out", False), "o": ("out", True), "E": ("err", False), "e": ("err", True),
}

State = Literal["running", "finished", "lost"]


@dataclass
class StepLaunch:
    """What to run and how; secrets travel to the supervisor on its stdin only."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    timeout_s: float | None = None
    kill_grace_s: float = 10.0
    redact: list[str] = field(default_factory=list)
    stdin_data: str | None = None
    event_fd: bool = False


@dataclass(frozen=True)
class Line:
    """One record of a step's output log."""

    ts: str
    stream: Literal["out", "err"]
    text: str
    partial: bool


@dataclass(frozen=True)
class StepResult:
    """The recorded outcome of a step (result.json)."""

    exit_code: int | None
    signal: int | None
    timed_out: bool
    cancelled: bool
    started_at: str
    ended_at: str
    duration_s: float
    error: str | None
    timeout_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled

    def describe(self) -> str:
        """A few words for the operator: 'exit 1', 'timed out after 30s', 'killed by SIGKILL', ..."""
        if self.error is not None and self.exit_code == 127 and self.signal is None:
            return f"could not start: {self.error}"
        if self.timed_out:
            return f"timed out after {short_duration(self.timeout_s if self.timeout_s is not None else self.duration_s)}"
        if self.cancelled:
            return "cancelled"
        if self.error is not None:
            return self.error
        if self.signal is not None:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        return f"exit {self.exit_code}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        return cls(
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            timed_out=bool(data.get("timed_out")),
            cancelled=bool(data.get("cancelled")),
            started_at=str(data.get("started_at", "")),
            ended_at=str(data.get("ended_at", "")),
            duration_s=float(data.get("duration_s") or 0.0),
            error=data.get("error"),
            timeout_s=data.get("timeout_s"),
        )


class Pids(NamedTuple):
    supervisor: int
    child: int | None
    pgid: int | None


def parse_records(text: str) -> list[Line]:
    """Parse complete output.log records (`<ts> <S> <text>` per line)."""
    lines: list[Line] = []
    for rec in text.split("\n"):
        parts = rec.split(" ", 2)
        if len(parts) < 2 or parts[1] not in _STREAMS:
            continue
        stream, partial = _STREAMS[parts[1]]
        lines.append(Line(parts[0], stream, parts[2] if len(parts) > 2 else "", partial))
    return lines


def read_output(step_dir: Path | str) -> list[Line]:
    """The whole output log of a step (complete records only)."""
    try:
        data = (Path(step_dir) / OUTPUT_FILE).read_bytes()
    except FileNotFoundError:
        return []
    return parse_records(data[: data.rfind(b"\n") + 1].decode("utf-8", errors="replace"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _supervisor_env() -> dict[str, str]:
    """A small environment for the supervisor itself, able to import this package from anywhere."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith(("LC_", "COVERAGE_"))}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return env


class _Tail:
    """Reads what was appended to a file since the last call, complete lines only."""

    def __init__(self, path: Path, from_start: bool) -> None:
        self.path = path
        self.offset = 0
        if not from_start:
            with contextlib.suppress(FileNotFoundError):
                self.offset = path.stat().st_size

    def read(self, limit: int = MAX_BATCH_BYTES) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(limit)
        except FileNotFoundError:
            return ""
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode("utf-8", errors="replace")


class StepProcess:
    """A step running (or run) under a supervisor, seen through its step directory."""

    def __init__(self, step_dir: Path, info: dict[str, Any], popen: subprocess.Popen[bytes] | None = None) -> None:
        self.step_dir = step_dir
        self._info = info
        self._popen = popen

    # -- start and attach ----------------------------------------------------------------------

    @classmethod
    def launch(cls, step_dir: Path, launch: StepLaunch) -> StepProcess:
        """Start the step's supervisor; return once the child has started (or failed to start)."""
        step_dir = Path(step_dir)
        step_dir.mkdir(parents=True, exist_ok=True)
        config = asdict(launch)
        config["cwd"] = launch.cwd if launch.cwd is not None else os.getcwd()
        with open(step_dir / SUPERVISOR_ERR, "ab") as err:
            popen = subprocess.Popen(
                [sys.executable, "-S", "-P", "-m", "runbook.supervisor", str(step_dir)],
                stdin=subprocess.PIPE, stdout=err, stderr=err,
                env=_supervisor_env(), start_new_session=True, close_fds=True,
            )
        assert popen.stdin is not None
        try:
            popen.stdin.write(json.dumps(config).encode())
            popen.stdin.close()
        except BrokenPipeError:
            pass
        info = cls._wait_started(step_dir, popen)
        return cls(step_dir, info, popen)

    @staticmethod
    def _wait_started(step_dir: Path, popen: subprocess.Popen[bytes]) -> dict[str, Any]:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while time.monotonic() < deadline:
            info = _read_json(step_dir / SUPERVISOR_FILE)
            if info is not None:
                return info
            if popen.poll() is not None:
                info = _read_json(step_dir / SUPERVISOR_FILE)
                if info is not None:
                    return info
                break
            time.sleep(0.005)
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        err = (step_dir / SUPERVISOR_ERR).read_text(errors="replace").strip()
        raise RuntimeError(f"the step supervisor did not start in {step_dir}" + (f": {err[-2000:]}" if err else ""))

    @classmethod
    def attach(cls, step_dir: Path) -> StepProcess:
        """Re-attach to a step started by an earlier front end (resume)."""
        step_dir = Path(step_dir)
        info = _read_json(step_dir / SUPERVISOR_FILE)
        if info is None:
            raise FileNotFoundError(f"no step was started in {step_dir} ({SUPERVISOR_FILE} is missing)")
        return cls(step_dir, info)

    # -- state ---------------------------------------------------------------------------------

    @property
    def pids(self) -> Pids:
        return Pids(int(self._info["supervisor_pid"]), self._info.get("child_pid"), self._info.get("pgid"))

    def _supervisor_alive(self) -> bool:
        self._reap()
        ticks = self._info.get("supervisor_start_ticks")
        return ticks is not None and start_ticks(self.pids.supervisor) == ticks

    def _reap(self) -> None:
        """Collect our own supervisor's exit status (if we launched it): no zombie is left behind."""
        if self._popen is not None:
            self._popen.poll()

    def _finished(self) -> bool:
        return (self.step_dir / RESULT_FILE).exists()

    def state(self) -> State:
        """'finished' (result recorded), 'running' (its supervisor lives) or 'lost'."""
        self._reap()
        if self._finished():
            return "finished"
        if self._supervisor_alive():
            return "running"
        return "finished" if self._finished() else "lost"

    @property
    def result(self) -> StepResult | None:
        data = _read_json(self.step_dir / RESULT_FILE)
        return StepResult.from_dict(data) if data is not None else None

    # -- follow and wait -----------------------------------------------------------------------

    async def follow(self, from_start: bool = True) -> AsyncIterator[list[Line] | dict[str, Any]]:
        """Output batches (one list per poll) and event dicts, until the step is finished or lost."""
        out = _Tail(self.step_dir / OUTPUT_FILE, from_start)
        events = _Tail(self.step_dir / EVENTS_FILE, from_start)
        while True:
            state = self.state()
            while True:  # drain what is there (several batches only for a huge backlog)
                batch = parse_records(out.read())
                evs = _parse_events(events.read())
                if batch:
                    yield batch
                for ev in evs:
                    yield ev
                if not batch and not evs:
                    break
                await asyncio.sleep(0)  # a backlog drains in slices: the front end handles keys in between
            if state != "running":
                return
            await asyncio.sleep(POLL_S)

    async def wait(self) -> StepResult | None:
        """Wait until the step is finished (its result) or lost (None)."""
        while self.state() == "running":
            await asyncio.sleep(POLL_S)
        if self._popen is not None:
            await asyncio.to_thread(self._popen.wait)
        return self.result

    # -- cancel and kill -----------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the supervisor to terminate the step; without a supervisor, terminate its group directly."""
        if self._finished():
            return
        if self._supervisor_alive():
            _signal_pid(self.pids.supervisor, signal.SIGTERM)
            return
        if not self._child_group_ours():
            return
        pgid = self.pids.pgid
        assert pgid is not None
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and _group_exists(pgid):
            time.sleep(0.02)
        _signal_group(pgid, signal.SIGKILL)

    def kill_session(self) -> None:
        """Kill the supervisor and the step's group without a trace (tests: the whole session died)."""
        if self._supervisor_alive():
            _signal_pid(self.pids.supervisor, signal.SIGKILL)
        if self._child_group_ours():
            assert self.pids.pgid is not None
            _signal_group(self.pids.pgid, signal.SIGKILL)
        if self._popen is not None:
            self._popen.wait()

    def _child_group_ours(self) -> bool:
        """The step's process group still exists and is not a stranger's reusing the numbers."""
        pgid, child = self.pids.pgid, self.pids.child
        if pgid is None or child is None or not _group_exists(pgid):
            return False
        ticks = start_ticks(child)
        return ticks is None or ticks == self._info.get("child_start_ticks")


def _parse_events(text: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for line in text.split("\n"):
        if not line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        events.append(ev if isinstance(ev, dict) else {"type": "value", "value": ev})
    return events


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    return bool(group_members(pgid))
