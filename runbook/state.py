"""A run's state, rebuilt from its journal (the journal is the only source of truth).

Also the layout of the state directory: `<state>/runs/<run id>/{journal.jsonl, runbook.yaml, params.json,
steps/<step>/<attempt>/...}`, and the listing of past runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from runbook.clock import parse_iso
from runbook.errors import JournalError, RunbookError
from runbook.events import StepStatus
from runbook.journal import read_journal
from runbook.paths import state_home

CLOSED = ("completed", "failed", "aborted")


def default_state_dir() -> Path:
    return state_home()


def runs_dir(state_dir: Path) -> Path:
    return state_dir / "runs"


def run_dir(state_dir: Path, run_id: str) -> Path:
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise RunbookError(f"{run_id!r} is not a run id", hint="`runbook runs` lists them")
    return runs_dir(state_dir) / run_id


def step_dir(rdir: Path, step_id: str, attempt: int) -> Path:
    return rdir / "steps" / step_id / str(attempt)


@dataclass
class StepState:
    id: str
    status: StepStatus = StepStatus.pending
    attempt: int = 0  # attempts started so far
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    detail: str = ""  # failure description or skip reason
    command: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    rehearsed: bool = False
    notes: list[str] = field(default_factory=list)
    first_started_at: datetime | None = None
    approved: dict[str, Any] | None = None  # {by, at, hash}: the two-person rule's approval (runbook.requests)
    failed_before: str | None = None  # the failure's detail when the step failed (or was marked failed) then skipped


@dataclass
class RunState:
    run_id: str
    runbook_name: str = ""
    runbook_path: str = ""
    scenario: str = ""
    mode: str = ""
    target: str = ""
    incident_start: datetime | None = None
    data_lost_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    rto_end_at: datetime | None = None
    rto_end_step: str | None = None
    status: str = "open"  # open | completed | failed | aborted
    detail: str = ""
    operator: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    steps: dict[str, StepState] = field(default_factory=dict)
    notes: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.status in CLOSED

    def rto_s(self, now: datetime | None = None) -> float | None:
        """Seconds from the incident start to the service being back (or to `now` while it is not)."""
        if self.incident_start is None:
            return None
        end = self.rto_end_at or (self.ended_at if self.status == "completed" else None) or now
        return None if end is None else (end - self.incident_start).total_seconds()


def _ts(ev: dict[str, Any], key: str = "ts") -> datetime | None:
    v = ev.get(key)
    return parse_iso(v) if isinstance(v, str) and v else None


def fold(run_id: str, events: list[dict[str, Any]]) -> RunState:
    """Apply journal events in order."""
    st = RunState(run_id=run_id)
    for ev in events:
        apply_event(st, ev)
    return st


def apply_event(st: RunState, ev: dict[str, Any]) -> None:
    """One journal event's effect on the state; unknown event types are kept but change nothing."""
    st.events.append(ev)
    t = ev["type"]
    ts = _ts(ev)
    sid = ev.get("step")
    step = st.steps.get(sid) if sid else None
    if t == "run-started":
        st.runbook_name = ev["runbook"]["name"]
        st.runbook_path = ev["runbook"].get("path", "")
        st.scenario = ev["scenario"]
        st.mode = ev["mode"]
        st.target = ev.get("target", "")
        st.incident_start = _ts(ev, "incident_start")
        st.data_lost_at = _ts(ev, "data_lost_at")
        st.started_at = ts
        st.operator = ev.get("operator", {})
        st.params = ev.get("params", {})
        st.targets = ev.get("targets", {})
        st.order = list(ev["steps"])
        st.steps = {s: StepState(id=s) for s in st.order}
        return
    if step is None:
        if t == "note":
            st.notes.append({"ts": ev["ts"], "text": ev["text"], "step": None})
        elif t == "run-finished":
            st.status = ev["status"]
            st.detail = ev.get("detail", "")
            st.ended_at = ts
            if st.status == "completed" and st.rto_end_at is None:
                st.rto_end_at = ts
        elif t == "run-reopened":
            st.status = "open"
            st.ended_at = None
        elif t == "steps-reopened":  # resume --redo-from: these steps are walked again (their attempts go on)
            for name in ev.get("steps", []):
                if name in st.steps:
                    reopen_step(st, st.steps[name])
        return
    if t == "step-awaiting":
        if step.status in (StepStatus.pending, StepStatus.failed, StepStatus.interrupted):
            step.status = StepStatus.awaiting
        step.command = ev.get("command", step.command)
    elif t == "approved":
        step.approved = {"by": ev.get("approver", ""), "at": ev.get("ts", ""), "command_hash": ev.get("command_hash", "")}
    elif t == "item-acked":
        if ev["index"] not in step.acked:
            step.acked.append(ev["index"])
    elif t == "step-started":
        step.status = StepStatus.running
        step.attempt = ev["attempt"]
        step.started_at = ts
        step.first_started_at = step.first_started_at or ts
        step.command = ev.get("command", step.command)
    elif t == "step-finished":
        step.status = StepStatus(ev["status"])
        step.ended_at = ts
        step.duration_s = ev.get("duration_s")
        step.exit_code = ev.get("exit_code")
        step.detail = ev.get("detail", "")
        step.rehearsed = bool(ev.get("rehearsal"))
        if ev.get("note"):
            step.notes.append(ev["note"])
        if ev.get("rto_end") and step.status == StepStatus.succeeded:
            st.rto_end_at = ts
            st.rto_end_step = sid
    elif t == "step-skipped":
        if step.status == StepStatus.failed:  # an outcome that came before the skip is kept, not overwritten
            step.failed_before = step.detail
        step.status = StepStatus.skipped
        step.detail = ev.get("reason", "")
        step.ended_at = ts
    elif t == "step-interrupted":
        step.status = StepStatus.interrupted
        step.detail = ev.get("detail", "")
    elif t in ("step-output", "value-provided"):
        step.outputs[ev["name"]] = ev["value"]
    elif t == "step-check":
        step.checks.append({k: ev.get(k) for k in ("name", "status", "hint")})
    elif t == "note":
        st.notes.append({"ts": ev["ts"], "text": ev["text"], "step": sid})
        step.notes.append(ev["text"])


def reopen_step(st: RunState, step: StepState) -> None:
    """A step walked again from the start (`runbook resume --redo-from`): its outcome, outputs and checks of the
    earlier attempts stay in the journal, not in the state; its attempt count goes on."""
    step.status = StepStatus.pending
    step.ended_at = None
    step.duration_s = None
    step.exit_code = None
    step.detail = ""
    step.outputs = {}
    step.checks = []
    step.acked = []
    step.rehearsed = False
    step.failed_before = None
    if st.rto_end_step == step.id:
        st.rto_end_at = None
        st.rto_end_step = None


def redo_steps(st: RunState, from_step: str) -> list[str]:
    """The steps `runbook resume --redo-from STEP` walks again: STEP and every step after it that has an outcome.
    Raises RunbookError when STEP is not in the run, has not been reached, or a step is running."""
    if from_step not in st.order:
        raise RunbookError(f"no step {from_step!r} in run {st.run_id} (scenario {st.scenario})",
                           hint=f"its steps: {', '.join(st.order)}")
    later = st.order[st.order.index(from_step):]
    running = [s for s in later if st.steps[s].status == StepStatus.running]
    if running:
        raise RunbookError(f"step {running[0]} is running: a step is never walked again under itself",
                           hint="resume without --redo-from to watch it (or cancel it), then redo")
    if st.steps[from_step].status in (StepStatus.pending, StepStatus.awaiting):
        raise RunbookError(f"step {from_step} has not run yet in run {st.run_id}: there is nothing to redo",
                           hint="resume without --redo-from: the run goes on at its next step")
    return [s for s in later if st.steps[s].status not in (StepStatus.pending, StepStatus.awaiting)]


def load_state(state_dir: Path, run_id: str) -> RunState:
    rdir = run_dir(state_dir, run_id)
    if not rdir.is_dir():
        raise RunbookError(f"no run {run_id} under {state_dir}", hint="`runbook runs` lists the runs there")
    read = read_journal(rdir / "journal.jsonl")
    if not read.events or read.events[0]["type"] != "run-started":
        raise JournalError(f"{rdir / 'journal.jsonl'}: the journal does not begin with run-started")
    st = fold(run_id, read.events)
    st.warnings = read.warnings
    return st


def list_runs(state_dir: Path) -> list[RunState | tuple[str, str]]:
    """Every run under the state dir, newest first; an unreadable one as (run id, why)."""
    out: list[RunState | tuple[str, str]] = []
    base = runs_dir(state_dir)
    if not base.is_dir():
        return out
    for d in sorted(base.iterdir(), key=lambda p: p.name, reverse=True):
        if not (d / "journal.jsonl").exists():
            continue
        try:
            out.append(load_state(state_dir, d.name))
        except RunbookError as e:
            out.append((d.name, e.message))
    return out
