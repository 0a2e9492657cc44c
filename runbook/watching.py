"""Following a run from outside it: the event sources a watcher reads (docs/architecture.md, "Watchers").

One journal, one driver, many watchers: the driver (whoever holds the run's lock) is the only writer of the
run's journal; a watcher only reads. An `EventSource` hands a watcher the journal's events as they are written,
in order and exactly as runbook.journal writes them (the same dicts, `hash` included), and says whether the run
has ended and whether its driver still looks alive. The watch cockpit rebuilds the run's state from these events
with runbook.state.apply_event, the same fold a resumed run uses, so a watcher shows what the driver shows.

`LocalEventSource` follows a run directory on this host: it reads `journal.jsonl` from where it stopped, never
returns a line until it is complete (the driver may be writing it), checks the hash chain as it goes, and
judges the driver's liveness by the run lock's holder (runbook.lock: its pid alive on this host). It takes no
lock (not even a shared one) and opens nothing for writing. Other sources (the repository's mirror of the
journal) implement the same protocol.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from runbook.clock import Clock, parse_iso
from runbook.errors import JournalError, RunbookError
from runbook.executor import OUTPUT_FILE, Line, parse_records
from runbook.journal import GENESIS, _hash, read_journal
from runbook.lock import lock_name, pid_alive
from runbook.lockfile import LockFile
from runbook.model import Runbook, Step
from runbook.redact import Redactor
from runbook.rto import RtoClock, rto_clock
from runbook.state import CLOSED, RunState, apply_event, run_dir, runs_dir, step_dir

OUTPUT_READ_MAX = 1 << 20  # bytes of a step's output read per call (a watcher catches up in pieces)


@dataclass(frozen=True)
class SourceStatus:
    ended: bool  # the run has closed (its summary exists)
    last_heard: datetime | None  # when the driver last wrote (an event or a heartbeat)
    silent_s: float | None  # seconds since last_heard, when the driver looks silent (None: alive)
    note: str = ""  # what a watcher should be told ("the repository is unreachable since 04:31: ...")


class EventSource(Protocol):
    def describe(self) -> str:
        """Where the events come from: "run RUN_ID in DIR (local)", "run RUN_ID via s3://..."."""
        ...

    def poll(self) -> list[dict[str, Any]]:
        """The journal events written since the last poll, in order, exactly as runbook.journal writes them."""
        ...

    def status(self) -> SourceStatus: ...


@runtime_checkable
class OutputSource(Protocol):
    """A source that can also show a step's output as its supervisor logs it (a local run directory can; the
    journal alone does not hold output)."""

    def output(self, step: str, attempt: int, offset: int) -> tuple[list[Line], int]:
        """The complete output records of the step's attempt from byte `offset` on, and the offset after them."""
        ...


Tail = tuple[str, int, int]  # the followed step, its attempt, the byte offset read so far in its output


def read_output(source: EventSource, tail: Tail | None) -> tuple[list[Line], Tail | None]:
    """The followed step's output lines written since `tail` (none from a source without output: the journal's
    lines are all a watcher shows then), and where the next read starts."""
    if tail is None or not isinstance(source, OutputSource):
        return [], tail
    sid, attempt, offset = tail
    got: list[Line] = []
    while True:
        lines, after = source.output(sid, attempt, offset)
        if after == offset:
            return got, (sid, attempt, offset)
        offset = after
        got.extend(lines)


@runtime_checkable
class RunbookSource(Protocol):
    """A source that finds the run's runbook copy only as it follows the run (the repository's mirror): the
    copy once it is verified, None until then (or when it was refused; its status note says why)."""

    def runbook(self) -> Runbook | None: ...


def ended_by(events: list[dict[str, Any]]) -> bool:
    """Do these events (a whole journal, in order) leave the run closed? A failed run that was resumed is open."""
    ended = False
    for ev in events:
        t = ev.get("type")
        if t == "run-finished" and ev.get("status") in CLOSED:
            ended = True
        elif t in ("run-reopened", "run-resumed"):
            ended = False
    return ended


def resolve_run_id(state_dir: Path, given: str) -> str:
    """A run id, or a prefix of exactly one run's id under `state_dir`. Raises RunbookError otherwise."""
    run_dir(state_dir, given)  # refuses a path or a dotted name
    base = runs_dir(state_dir)
    if (base / given / "journal.jsonl").is_file():
        return given
    found = sorted(d.name for d in base.iterdir() if d.name.startswith(given)
                   and (d / "journal.jsonl").is_file()) if base.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise RunbookError(f"no run {given} under {state_dir}",
                           hint="`runbook runs` lists the runs there (--state-dir names another state directory)")
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    raise RunbookError(f"{given!r} names {len(found)} runs: {shown}", hint="give more of the run id")


class LocalEventSource:
    """Follows `<state dir>/runs/<run id>/journal.jsonl` on this host, read-only and without a lock."""

    def __init__(self, state_dir: Path, run_id: str, *, clock: Clock | None = None) -> None:
        self.state_dir = state_dir
        self.run_id = run_id
        self.rdir = run_dir(state_dir, run_id)
        self.path = self.rdir / "journal.jsonl"
        if not self.path.is_file():
            raise RunbookError(f"no run {run_id} under {state_dir}", hint="`runbook runs` lists the runs there")
        self.clock = clock or Clock()
        self._offset = 0  # bytes of the file returned so far (whole lines only)
        self._line = 0  # lines returned so far
        self._prev = GENESIS
        self._started: dict[str, Any] | None = None
        self._driver: dict[str, Any] = {}  # the operator of the latest run-started / run-resumed
        self._ended = False
        self._pending_note = ""
        self._steps: set[str] = set()
        self._last_ts: datetime | None = None  # the run's step ids (output is read only for these)

    def describe(self) -> str:
        return f"run {self.run_id} in {self.rdir} (local)"

    # --- events -------------------------------------------------------------------------------------------

    def poll(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._offset:
                    raise JournalError(f"{self.path}: the journal became shorter while it was watched "
                                       f"({size} bytes, {self._offset} read); it was replaced or cut",
                                       hint="keep a copy of the file for the post-mortem")
                f.seek(self._offset)
                data = f.read(size - self._offset)
        except FileNotFoundError:
            raise JournalError(f"{self.path}: the journal disappeared while it was watched") from None
        end = data.rfind(b"\n")
        if end < 0:
            self._pending_note = "the driver is writing a line" if data else ""
            return []  # no complete line yet: a partial one waits for its newline
        self._pending_note = ""
        out: list[dict[str, Any]] = []
        for raw in data[: end + 1].split(b"\n")[:-1]:
            n = self._line + 1
            ev = self._verify(raw, n)
            if ev is None:  # a complete but unreadable line, so far the last one: the driver's resume drops it
                break
            out.append(ev)
            self._line = n
            self._offset += len(raw) + 1
            self._account(ev)
        return out

    def _verify(self, raw: bytes, n: int) -> dict[str, Any] | None:
        where = f"{self.path}:{n}"
        try:
            ev = json.loads(raw.decode("utf-8"))
            if not isinstance(ev, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            self._pending_note = f"line {n} of the journal is unreadable (a torn write?); waiting for the driver"
            return None
        claimed = ev.pop("hash", None)
        if ev.get("seq") != n:
            raise JournalError(f"{where}: sequence number {ev.get('seq')!r} where {n} was expected "
                               "(a line was removed or inserted)")
        if ev.get("prev") != self._prev:
            raise JournalError(f"{where}: the chain is broken here (the line before it was changed, removed or "
                               "reordered)")
        if claimed != _hash(ev):
            raise JournalError(f"{where}: this line was changed after it was written (its hash does not match)")
        if n == 1 and ev.get("type") != "run-started":
            raise JournalError(f"{where}: the journal does not begin with run-started")
        ev["hash"] = claimed
        self._prev = claimed
        return ev

    def _account(self, ev: dict[str, Any]) -> None:
        t = ev.get("type")
        with contextlib.suppress(ValueError, TypeError):
            self._last_ts = parse_iso(str(ev.get("ts")))
        if t == "run-started":
            self._started = ev
            self._steps = {str(x) for x in ev.get("steps") or []}
        if t in ("run-started", "run-resumed") and isinstance(ev.get("operator"), dict):
            self._driver = ev["operator"]
        if t == "run-finished":
            self._ended = ev.get("status") in CLOSED
        elif t in ("run-reopened", "run-resumed"):
            self._ended = False

    # --- output -------------------------------------------------------------------------------------------

    def output(self, step: str, attempt: int, offset: int) -> tuple[list[Line], int]:
        if attempt < 1 or step not in self._steps or "/" in step or step.startswith("."):
            return [], offset
        try:
            with open(step_dir(self.rdir, step, attempt) / OUTPUT_FILE, "rb") as f:
                f.seek(offset)
                data = f.read(OUTPUT_READ_MAX)
        except (FileNotFoundError, NotADirectoryError):
            return [], offset
        end = data.rfind(b"\n") + 1
        return parse_records(data[:end].decode("utf-8", errors="replace")), offset + end

    # --- liveness -----------------------------------------------------------------------------------------

    def status(self) -> SourceStatus:
        last = self._last_write()
        if self._ended:
            return SourceStatus(ended=True, last_heard=last, silent_s=None, note="")
        alive, why = self._driver_alive()
        if alive:
            return SourceStatus(ended=False, last_heard=last, silent_s=None, note=why or self._pending_note)
        silent = max(0.0, (self.clock.now() - last).total_seconds()) if last else 0.0
        return SourceStatus(ended=False, last_heard=last, silent_s=silent, note=why)

    def _last_write(self) -> datetime | None:
        """When the driver last wrote: its last event's time (the driver's clock, this host's too); before the
        first whole event, the journal file's modification time."""
        if self._last_ts is not None:
            return self._last_ts
        try:
            return datetime.fromtimestamp(os.stat(self.path).st_mtime, UTC)
        except OSError:
            return None

    def lock_path(self) -> Path | None:
        """The run lock's file (None for a rehearsal, which takes no lock, or before run-started is read)."""
        st = self._started
        if not st or st.get("mode") == "rehearsal":
            return None
        name = (st.get("runbook") or {}).get("name", "")
        return self.state_dir / "locks" / lock_name(str(name), str(st.get("target") or "default"))

    def _driver_alive(self) -> tuple[bool, str]:
        """Is the run's driver alive? The lock's holder (read, never taken) when the run takes a lock, else the
        process that last opened the run. A driver on another host cannot be checked from here: alive."""
        if self._started is None:
            return True, "the run is starting"
        path = self.lock_path()
        if path is not None:
            holder = LockFile.read_holder(path)
            if not holder or holder.get("run_id") != self.run_id:
                return False, "the run lock is no longer held for this run: its driver left or died"
            who = holder
        else:
            who = self._driver
        host, pid = who.get("host"), who.get("pid")
        if host and host != socket.gethostname():
            return True, f"driven from {host}: its liveness cannot be checked from this host"
        if not isinstance(pid, int) or not pid_alive(pid):
            return False, f"the driver's process (pid {pid}) is gone"
        return True, ""


# --- the run as a watcher sees it ----------------------------------------------------------------------------

# The events that name who drives the run from then on: (event type, the field holding the operator record).
DRIVER_EVENTS: dict[str, str] = {"run-started": "operator", "run-resumed": "operator"}


@dataclass(frozen=True)
class Driver:
    user: str
    host: str
    since: str  # the journal time the driver took the run

    def describe(self) -> str:
        return f"{self.user}@{self.host}"


def driver_of(events: list[dict[str, Any]]) -> Driver | None:
    """Who drives the run after these events (the last run-started, run-resumed or hand-over)."""
    found = None
    for ev in events:
        key = DRIVER_EVENTS.get(str(ev.get("type")))
        who = ev.get(key) if key else None
        if isinstance(who, dict):
            found = Driver(str(who.get("user", "?")), str(who.get("host", "?")), str(ev.get("ts", "")))
    return found


@dataclass
class WatchContext:
    """What a cockpit reads beside the state (the driver's RunContext has the same names)."""

    runbook: Runbook
    expected: dict[str, float]
    redactor: Redactor
    rdir: Path | None  # the run directory, when the watcher is on the driver's host
    state_dir: Path | None


class WatchedRun:
    """A run rebuilt from an EventSource's events through runbook.state.apply_event, the fold a resumed run
    uses: the same state, step statuses, outputs and RTO clock as the driver's. Read-only: it offers nothing
    that would change the run (no decisions, no notes).

    `runbook` is the run's own copy of its runbook (titles, descriptions, checklists) when the watcher can
    read it; without one, each step is shown by its id. `expected` holds the expected step durations (the
    projection); `update()` takes what the source has written since the last call."""

    def __init__(self, source: EventSource, *, runbook: Runbook | None = None,
                 expected: dict[str, float] | None = None, clock: Clock | None = None,
                 rdir: Path | None = None, state_dir: Path | None = None, run_id: str = "") -> None:
        self.source = source
        self.clock = clock or Clock()
        self.state = RunState(run_id=run_id)
        self._declared = runbook is not None
        self.ctx = WatchContext(runbook=runbook or _placeholder([]), expected=dict(expected or {}),
                                redactor=Redactor([]), rdir=rdir, state_dir=state_dir)
        self.last_status = SourceStatus(ended=False, last_heard=None, silent_s=None)

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def started(self) -> bool:
        return bool(self.state.events)

    def update(self) -> list[dict[str, Any]]:
        """Fold the source's new events into the state; returns them (in order)."""
        new = self.source.poll()
        for ev in new:
            if ev.get("type") == "run-started" and not self.state.run_id:
                self.state.run_id = str(ev.get("run_id") or "")
            apply_event(self.state, ev)
            if ev.get("type") == "run-started" and not self._declared:
                self.ctx.runbook = _placeholder(self.state.order)
        if not self._declared and isinstance(self.source, RunbookSource):
            found = self.source.runbook()
            if found is not None:  # the run's copy, verified: titles, and the declared expected durations
                self.ctx.runbook, self._declared = found, True
                self.ctx.expected = {**declared_durations(found), **self.ctx.expected}
        self.last_status = self.source.status()
        return new

    @property
    def driver(self) -> Driver | None:
        return driver_of(self.state.events)

    @property
    def steps(self) -> list[str]:
        return [s for s in self.state.order if s in self.state.steps]

    def clock_status(self) -> RtoClock:
        left = [s for s in self.steps if not self.state.steps[s].status.done]
        return rto_clock(self.state, self.clock.now(), self.ctx.expected, left)

    def display_command(self, step: Step) -> str | None:
        """A watcher shows only the commands the driver showed (journaled, values in, secrets masked): it has
        neither the values nor the secrets to render one itself."""
        return None


def _placeholder(order: list[str]) -> Runbook:
    """A runbook standing in for one the watcher cannot read: each step by its id, nothing to run."""
    return Runbook.model_construct(version=1, name="", steps=[Step.model_construct(id=s, run="") for s in order])


def declared_durations(runbook: Runbook) -> dict[str, float]:
    """The steps' `expect_duration`s, in seconds."""
    return {s.id: s.expect_duration.total_seconds() for s in runbook.steps if s.expect_duration}


def expected_for(state_dir: Path, runbook: Runbook, run_id: str) -> dict[str, float]:
    """The expected step durations the driver's projection uses (runbook.history), read from this state dir."""
    from runbook.history import expected_durations, past_runs

    return expected_durations(past_runs(state_dir, runbook.name, exclude=run_id), declared_durations(runbook))


def open_local(state_dir: Path, given: str, *, clock: Clock | None = None) -> WatchedRun:
    """The run `given` (an id or a unique prefix) under `state_dir`, followed read-only: its journal, its copy of
    the runbook, the expected durations of its past runs."""
    from runbook.loader import load_runbook

    run_id = resolve_run_id(state_dir, given)
    source = LocalEventSource(state_dir, run_id, clock=clock)
    read_journal(source.path)  # a journal damaged before its last line is refused here, naming the line
    rdir = run_dir(state_dir, run_id)
    runbook: Runbook | None = None
    expected: dict[str, float] = {}
    try:
        runbook = load_runbook(rdir / "runbook.yaml")
        expected = expected_for(state_dir, runbook, run_id)
    except RunbookError:
        runbook = None  # a copy that cannot be read: steps by their ids (the journal is what counts)
    return WatchedRun(source, runbook=runbook, expected=expected, clock=clock, rdir=rdir, state_dir=state_dir,
                      run_id=run_id)
