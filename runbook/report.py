"""The recovery report: what happened in a run, from its journal alone.

This module holds the facts every form of the report shares (the RTO and the RPO of a run, the span of
each step on the timeline), computed once here, and the Markdown form. `runbook.report_html` draws the
same facts as one self-contained HTML page.

Facts only: the timeline, each step's outcome, exit code and duration, skips with their reasons, notes,
the RTO achieved against the target (service restored vs run closed) and, when a step reported a
recovery point, the data-loss window against the RPO target.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.clock import parse_iso
from runbook.durations import format_duration, rough_duration
from runbook.events import StepStatus
from runbook.state import RunState, StepState

if TYPE_CHECKING:
    from runbook.gameday import Debrief

EVENT_TEXT = {
    "run-started": "run started",
    "run-resumed": "run resumed",
    "run-reopened": "run reopened after a failure",
    "steps-reopened": "steps to walk again (resume --redo-from)",
    "params-set": "params changed on resume (--set)",
    "run-detached": "front end left; run stays open",
    "run-finished": "run closed",
    "step-awaiting": "shown to the operator",
    "step-confirmed": "confirmed",
    "confirm-refused": "typed confirmation refused",
    "item-acked": "checklist item done",
    "step-started": "started",
    "step-finished": "finished",
    "step-skipped": "skipped",
    "step-interrupted": "interrupted",
    "step-reattached": "re-attached (still running)",
    "rerun-chosen": "operator chose to re-run",
    "retry-requested": "operator chose to retry",
    "cancel-requested": "cancel requested",
    "step-output": "output",
    "step-check": "check",
    "value-provided": "value given by the operator",
    "note": "note",
    "warning": "warning",
    "lock-broken": "lock taken over",
    "frontend-error": "front end error; run stays open",
    "engine-error": "engine error; run stays open",
    "approval-awaited": "waiting for approval by another operator",
    "approved": "approved",
    "approval-refused": "approval refused",
    "request-refused": "request refused",
    "handover-requested": "take-over requested",
    "handover": "handed over",
    "handed-over": "handed over to another host",
    "takeover-refused": "take-over refused",
    "approver-policy": "approver policy changed",
    "reminder-done": "timed duty done",
}

MODE_BADGE = {"live": "LIVE", "drill": "DRILL", "rehearsal": "REHEARSAL"}

# Step outputs that name a recovery point (ISO 8601), in order of preference within one step.
RECOVERY_POINT_OUTPUTS = ("recovery_point", "snapshot_time")
# Built-in actions whose recovery point is a logical dump's snapshot.
LOGICAL_BACKUP_ACTIONS = frozenset({"fetch-latest-backup"})
PITR_SCENARIO = "pitr"
# The run parameter naming the cluster (system identifier) whose backup the recovery expects, and the step
# output naming the cluster whose backup it restored: when both are set and differ, no RPO can be claimed.
EXPECTED_CLUSTER_PARAM = "source_cluster"
RESTORED_CLUSTER_OUTPUT = "cluster"


# ---- the facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RtoFacts:
    """The RTO of a run: from the incident start to the service being back (the `rto_end` step)."""

    target_s: float
    achieved_s: float | None  # None: no incident start recorded
    restored: bool  # the service is back (the rto_end step succeeded, or the run completed)
    restored_at: datetime | None
    restored_step: str | None  # None with `restored`: the end of the run stopped the clock
    closed_at: datetime | None
    closed_after_s: float | None  # run closed, counted from the incident start
    verdict: str  # met | missed | not yet decided | unknown | impossible
    rehearsal: bool
    protected_at: datetime | None = None  # a step's `protected_at` output (reprotect): backups run again
    protected_step: str | None = None
    protected_after_s: float | None = None  # counted from the incident start
    problem: str | None = None  # a premise of the verdict does not hold (then the verdict is "impossible")

    @property
    def state_text(self) -> str:
        if self.restored:
            return "service restored"
        return "service NOT restored (clock still running at report time)"


def rto_facts(st: RunState, now: datetime) -> RtoFacts:
    target = float(st.targets.get("rto_s", 0.0))
    achieved = st.rto_s(now)
    restored = st.rto_end_at is not None
    problem = None
    if achieved is not None and achieved < 0:
        problem = (f"the service is recorded back at {_t(st.rto_end_at or now)}, before the incident start "
                   f"{_t(st.incident_start)}: a wrong --incident-start, or a clock that went backwards")
        verdict = "impossible"
    elif achieved is None:
        verdict = "unknown"
    elif achieved > target:
        verdict = "missed"
    else:
        verdict = "met" if restored else "not yet decided"
    closed_after = (
        (st.ended_at - st.incident_start).total_seconds() if st.ended_at and st.incident_start else None
    )
    protected_at, protected_step = None, None
    for sid in st.order:
        value = st.steps[sid].outputs.get("protected_at") if sid in st.steps else None
        if isinstance(value, str) and value:
            try:
                protected_at, protected_step = datetime.fromisoformat(value), sid
            except ValueError:
                continue
    protected_after = ((protected_at - st.incident_start).total_seconds()
                       if protected_at and st.incident_start else None)
    return RtoFacts(
        target_s=target, achieved_s=achieved, restored=restored, restored_at=st.rto_end_at,
        restored_step=st.rto_end_step, closed_at=st.ended_at, closed_after_s=closed_after, verdict=verdict,
        rehearsal=st.mode == "rehearsal", protected_at=protected_at, protected_step=protected_step,
        protected_after_s=protected_after, problem=problem,
    )


@dataclass(frozen=True)
class RpoFacts:
    """The RPO of a run: the moment data was lost minus the recovery point the recovery reached."""

    target_s: float | None
    recovery_point: datetime | None  # None when the reported value could not be read (see `problem`)
    recovery_point_raw: str
    source_step: str
    source_output: str  # recovery_point | snapshot_time
    data_lost_at: datetime | None
    data_lost_is_incident_start: bool  # --data-lost-at was not given (or equals the incident start)
    window_s: float | None  # data_lost_at - recovery_point, never below 0
    logical: bool  # the recovery point is a logical dump's snapshot
    rows_lost: Any  # a step's `rows_lost` output, as reported; None when no step counted them
    rows_lost_step: str | None
    problem: str | None = None
    impossible: bool = False  # a premise does not hold: the recovery point is after the loss

    @property
    def verdict(self) -> str:
        if self.impossible:
            return "impossible"
        if self.window_s is None or self.target_s is None:
            return "unknown"
        return "met" if self.window_s <= self.target_s else "missed"

    @property
    def logical_warning(self) -> str | None:
        """Plain words when a logical backup was the recovery point and the target asks for better."""
        if not self.logical or (self.target_s is not None and self.target_s >= 86400):
            return None
        target = f"a {_phrase(self.target_s)} RPO" if self.target_s else "a tight RPO"
        text = (
            f"This recovery point is a logical backup: a logical backup alone cannot meet {target}, "
            "because everything written after its snapshot is lost, and a disaster can strike up to a whole "
            "backup interval after it."
        )
        if self.verdict == "met" and self.window_s is not None:
            text += f" This run met the target only because the data was lost {window_text(self.window_s)} after the backup."
        return text + (
            f" To lose at most minutes whenever the disaster comes, recover with scenario 2 (`{PITR_SCENARIO}`: "
            "a base backup plus the archived WAL, up to a moment in time)."
        )


def window_text(seconds: float) -> str:
    """A data-loss window: `0.8 s` below a minute (a drill's window is often that short), else `9:00:00`."""
    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


def _phrase(seconds: float) -> str:
    """300 -> `5-minute`, 3600 -> `1-hour`, 90 -> `90-second`."""
    s = round(seconds)
    if s % 3600 == 0:
        return f"{s // 3600}-hour"
    if s % 60 == 0:
        return f"{s // 60}-minute"
    return f"{s}-second"


def step_action(st: RunState, step_id: str) -> str | None:
    """The built-in action a step ran, from the journal (`step-awaiting` of kind `action`)."""
    for e in st.events:
        if e.get("type") == "step-awaiting" and e.get("step") == step_id and e.get("kind") == "action":
            command = str(e.get("command") or "").strip()
            return command.split(None, 1)[0] if command else None
    return None


def _state_dir_flag(state_dir: Path) -> str:
    from runbook.paths import state_home

    given = Path(state_dir).expanduser()
    return "" if given.resolve() == state_home().resolve() else f" --state-dir {shlex.quote(str(given))}"


def report_command(run_id: str, state_dir: Path) -> str:
    """The `runbook report` line to print, as it works from any directory: `--state-dir` when not the default."""
    return f"runbook report {run_id}{_state_dir_flag(state_dir)}"


def resume_command(run_id: str, state_dir: Path) -> str:
    """The `runbook resume` line to print, as it works from any directory: `--state-dir` when not the default."""
    return f"runbook resume {run_id}{_state_dir_flag(state_dir)}"


def approve_command(run_id: str, step_id: str, state_dir: Path) -> str:
    """The `runbook approve` line another operator runs, as it works from any directory."""
    return f"runbook approve {run_id} {step_id}{_state_dir_flag(state_dir)}"


def alone_command(run_id: str, state_dir: Path) -> str:
    """What an operator with nobody to approve runs instead (after quitting): the run resumed without the
    two-person rule, which the journal records (engine: `approver-policy`)."""
    return f"{resume_command(run_id, state_dir)} --approver-policy none"


def leaving_lines(run_id: str, status: str, state_dir: Path) -> list[str]:
    """What a front end prints as the operator leaves: the run, its status, and the exact next command."""
    if status in ("detached", "open"):
        return [f"run {run_id}: {status}, it stays open", f"  go on with:  {resume_command(run_id, state_dir)}"]
    return [f"run {run_id}: {status}", f"  report:  {report_command(run_id, state_dir)}"]


@dataclass(frozen=True)
class StoryLine:
    text: str
    alarm: bool = False  # a verdict that is missed or cannot be true: shown in red


def end_story(st: RunState, now: datetime) -> list[StoryLine]:
    """What the end of a run tells beside the RTO: the recovery point, the data-loss window against the RPO,
    the rows lost, and when protection was restored. Empty facts are left out."""
    lines: list[StoryLine] = []
    rpo = rpo_facts(st)
    if rpo is not None:
        if rpo.impossible:
            lines.append(StoryLine(f"RPO IMPOSSIBLE, not met: {rpo.problem}", alarm=True))
        elif rpo.recovery_point is not None and rpo.window_s is not None:
            target = f" (target {rough_duration(rpo.target_s)})" if rpo.target_s is not None else ""
            lines.append(StoryLine(f"recovered to {rpo.recovery_point_raw} (step {rpo.source_step}); data-loss "
                                   f"window {window_text(rpo.window_s)}{target}: {rpo.verdict}",
                                   alarm=rpo.verdict == "missed"))
        elif rpo.problem:
            lines.append(StoryLine(f"RPO not measured: {rpo.problem}"))
        if rpo.rows_lost is not None:
            lines.append(StoryLine(f"rows lost: {rpo.rows_lost} (step {rpo.rows_lost_step})"))
    rto = rto_facts(st, now)
    if rto.protected_at is not None:
        after = f", {format_duration(rto.protected_after_s)} after the incident start" \
            if rto.protected_after_s is not None else ""
        lines.append(StoryLine(f"protection restored at {_t(rto.protected_at)}{after}"))
    return lines


def outcome_text(s: StepState) -> str:
    """A step's outcome as it happened: a step that failed (or was marked failed in a rehearsal) and was then
    skipped says both, in that order."""
    if s.status == StepStatus.skipped and s.failed_before is not None:
        return f"{StepStatus.failed.icon} failed, then {s.status.icon} skipped"
    return f"{s.status.icon} {s.status.value}"


def outcome_detail(s: StepState) -> str:
    parts = [f"{s.failed_before}; skipped: {s.detail}" if s.failed_before is not None else s.detail]
    if s.rehearsed and s.notes:
        parts.append("note: " + "; ".join(s.notes))
    return " — ".join(p for p in parts if p)


def rpo_facts(st: RunState) -> RpoFacts | None:
    """The RPO facts, or None when no step reported a recovery point (nor rows lost).

    The recovery point is the `recovery_point` (else `snapshot_time`) output of the last step, in journal
    order, that reported one; `rows_lost` is the last such output of any step.
    """
    source: tuple[str, str] | None = None
    rows: tuple[str, Any] | None = None
    for e in st.events:
        if e.get("type") not in ("step-output", "value-provided") or not e.get("step"):
            continue
        sid, name = str(e["step"]), e.get("name")
        if name in RECOVERY_POINT_OUTPUTS:
            source = (sid, str(name))
        elif name == "rows_lost":
            rows = (sid, e.get("value"))
    if source is None and rows is None:
        return None
    target = st.targets.get("rpo_s")
    lost_at = st.data_lost_at or st.incident_start
    lost_is_start = st.data_lost_at is None or st.data_lost_at == st.incident_start
    if source is None:
        return RpoFacts(
            target_s=target, recovery_point=None, recovery_point_raw="", source_step="", source_output="",
            data_lost_at=lost_at, data_lost_is_incident_start=lost_is_start, window_s=None, logical=False,
            rows_lost=rows[1] if rows else None, rows_lost_step=rows[0] if rows else None,
            problem="no step reported a recovery point (an output named recovery_point or snapshot_time)",
        )
    sid, _ = source
    outputs = st.steps[sid].outputs if sid in st.steps else {}
    name = next((n for n in RECOVERY_POINT_OUTPUTS if n in outputs), source[1])
    raw = str(outputs.get(name, ""))
    point: datetime | None = None
    problem = None
    try:
        point = parse_iso(raw)
    except ValueError as e:
        problem = f"the recovery point {raw!r} reported by step {sid} is not an ISO 8601 time with a zone ({e})"
    window = max(0.0, (lost_at - point).total_seconds()) if (point and lost_at) else None
    impossible = bool(point and lost_at and point > lost_at)
    expected = str(st.params.get(EXPECTED_CLUSTER_PARAM) or "")
    restored = str(outputs.get(RESTORED_CLUSTER_OUTPUT) or "")
    if expected and restored and expected != restored:
        impossible, window = True, None
        problem = (f"the backup restored (step {sid}) is of cluster {restored}, not of cluster {expected} that "
                   f"the recovery expected ({EXPECTED_CLUSTER_PARAM}): its recovery point says nothing about the "
                   "data that was lost")
    elif impossible:
        window = None
        problem = (f"the recovery point {raw} (step {sid}) is after the moment data was lost, {_t(lost_at)}: the "
                   "recovery restored something taken after the loss (another backup or cluster than the one "
                   "expected, a sandbox rebuilt during the drill, a wrong --data-lost-at, or a clock that went "
                   "backwards); no data-loss window can be claimed")
    logical = str(outputs.get("kind", "")).lower() == "logical" or step_action(st, sid) in LOGICAL_BACKUP_ACTIONS
    return RpoFacts(
        target_s=target, recovery_point=point, recovery_point_raw=raw, source_step=sid, source_output=name,
        data_lost_at=lost_at, data_lost_is_incident_start=lost_is_start, window_s=window, logical=logical,
        rows_lost=rows[1] if rows else None, rows_lost_step=rows[0] if rows else None, problem=problem,
        impossible=impossible,
    )


@dataclass(frozen=True)
class StepSpan:
    """Where a step sits on the timeline: from its first start (or when it was shown, for steps that
    never start a process: manual, rehearsed, skipped) to its end (or to `now` while it is open)."""

    step_id: str
    status: StepStatus
    start: datetime
    end: datetime
    open: bool  # not ended yet: the bar runs to the report time
    rehearsed: bool
    failed_attempts: tuple[tuple[datetime, datetime], ...] = ()  # attempts that failed before a retry


def step_spans(st: RunState, now: datetime) -> list[StepSpan]:
    """One span per step that was reached, in runbook order; steps never reached have none."""
    shown: dict[str, datetime] = {}
    interrupted: dict[str, datetime] = {}
    attempt_start: dict[str, datetime] = {}
    failed: dict[str, list[tuple[datetime, datetime]]] = {}
    for e in st.events:
        sid = e.get("step")
        if not sid or not isinstance(e.get("ts"), str):
            continue
        ts = parse_iso(e["ts"])
        if e["type"] == "step-awaiting" and sid not in shown:
            shown[sid] = ts
        elif e["type"] == "step-started":
            attempt_start[sid] = ts
        elif e["type"] == "step-finished" and e.get("status") == "failed" and sid in attempt_start:
            failed.setdefault(sid, []).append((attempt_start[sid], ts))
        elif e["type"] == "step-interrupted":
            interrupted[sid] = ts
    out: list[StepSpan] = []
    for sid in st.order:
        s = st.steps[sid]
        start = s.first_started_at or shown.get(sid) or s.ended_at
        if start is None:
            continue
        end = s.ended_at
        if s.status == StepStatus.interrupted:
            end = interrupted.get(sid, end)
        is_open = end is None or s.status in (StepStatus.running, StepStatus.awaiting)
        if is_open:
            end = st.ended_at if st.closed and st.ended_at else now
        assert end is not None
        earlier = tuple(failed.get(sid, ())) if s.status != StepStatus.failed else ()
        out.append(StepSpan(sid, s.status, start, max(start, end), is_open, s.rehearsed, earlier))
    return out


def step_counts(st: RunState) -> dict[StepStatus, int]:
    counts: dict[StepStatus, int] = {}
    for sid in st.order:
        status = st.steps[sid].status
        counts[status] = counts.get(status, 0) + 1
    return counts


# ---- shared text -------------------------------------------------------------------------------------


def fmt_time(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S %Z") if dt else "—"


_t = fmt_time


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def event_text(e: dict[str, object]) -> str:
    t = str(e["type"])
    return EVENT_TEXT.get(t, t)


def event_detail(e: dict[str, object]) -> str:
    t = e["type"]
    if t == "step-finished":
        parts = [str(e.get("status")), str(e.get("detail") or "")]
        if e.get("note"):
            parts.append(f"note: {e['note']}")
        return " — ".join(p for p in parts if p)
    if t == "step-skipped":
        return f"reason: {e.get('reason')}"
    if t == "step-started":
        return f"attempt {e.get('attempt')}"
    if t == "step-confirmed":
        return f"by {e.get('how')}" + (" (typed)" if e.get("typed") else "")
    if t == "item-acked":
        return str(e.get("item"))
    if t in ("note", "warning"):
        return str(e.get("text"))
    if t in ("step-output", "value-provided"):
        return f"{e.get('name')} = {e.get('value')}"
    if t == "step-check":
        return f"{e.get('name')}: {e.get('status')} {e.get('hint') or ''}".strip()
    if t in ("run-finished", "run-detached"):
        return f"{e.get('status', '')} {e.get('detail') or e.get('reason') or ''}".strip()
    if t in ("step-interrupted", "engine-error"):
        return str(e.get("detail", ""))
    if t == "frontend-error":
        text = f"{e.get('error')}: {e.get('message')}" if e.get("message") else str(e.get("error"))
        return text + (f" — hint: {e['hint']}" if e.get("hint") else "")
    if t == "approved":
        return f"by {approver_text(e)} (command {str(e.get('command_hash', ''))[:12]})"
    if t in ("approval-refused", "takeover-refused", "request-refused"):
        who = e.get("approver") or e.get("user")
        if who and (e.get("approver_host") or e.get("host")):
            who = f"{who}@{e.get('approver_host') or e.get('host')}"
        if e.get("remote") and e.get("request"):
            who = f"{who or 'the repository'} ({str(e['request']).rsplit('/', 1)[-1]})"
        return (f"from {who}: " if who else "") + str(e.get("reason", ""))
    if t == "handover-requested":
        by = e.get("by") if isinstance(e.get("by"), dict) else {}
        return f"by {_who(by)}"
    if t in ("handover", "handed-over"):
        frm = e.get("from") if isinstance(e.get("from"), dict) else {}
        to = e.get("to") if isinstance(e.get("to"), dict) else {}
        how = ""
        if e.get("remote"):
            how = " through the repository" + (f", FORCED: the driver silent for {e.get('silent_s')} s"
                                               if e.get("forced") else "")
        return f"from {_who(frm)} to {_who(to)}{how}"
    if t == "approver-policy":
        return f"{e.get('previous')} → {e.get('policy')}"
    if t == "reminder-done":
        return str(e.get("title", ""))
    if t == "lock-broken":
        prev = e.get("previous") or {}
        return f"from run {prev.get('run_id')} of {prev.get('user')}@{prev.get('host')}" if isinstance(prev, dict) else ""
    return ""


def _who(d: Any) -> str:
    if not isinstance(d, dict):
        return "?"
    pid = f" (pid {d['pid']})" if d.get("pid") else ""
    return f"{d.get('user', '?')}@{d.get('host', '?')}{pid}"


@dataclass(frozen=True)
class DriverSpan:
    """Who drove the run from `start` to `end` (None: still driving). `how`: started, resumed, took over."""

    user: str
    host: str
    start: datetime
    end: datetime | None
    how: str


def driver_spans(st: RunState) -> list[DriverSpan]:
    """Who drove when, from the journal: the run's start, each resume and each hand-over."""
    spans: list[DriverSpan] = []
    cur: dict[str, Any] = {}

    def close(at: datetime | None) -> None:
        if cur:
            spans.append(DriverSpan(cur["user"], cur["host"], cur["start"], at, cur["how"]))
            cur.clear()

    for e in st.events:
        t = e.get("type")
        ts = parse_iso(str(e["ts"]))
        op: dict[str, Any] = e["operator"] if isinstance(e.get("operator"), dict) else {}
        if t in ("run-started", "run-resumed"):
            close(ts)
            cur.update(user=op.get("user", "?"), host=op.get("host", "?"), start=ts,
                       how="started" if t == "run-started" else "resumed")
        elif t == "handover" and cur:
            frm: dict[str, Any] = e["from"] if isinstance(e.get("from"), dict) else {}
            forced = "forced " if e.get("forced") else ""
            cur["how"] = f"{forced}took over from {frm.get('user', '?')}@{frm.get('host', '?')}"
        elif t in ("run-detached", "run-finished"):
            close(ts)
    close(None)
    return spans


@dataclass(frozen=True)
class ApprovalRecord:
    step: str
    approver: str
    at: str
    command_hash: str


def approvals(st: RunState) -> list[ApprovalRecord]:
    return [ApprovalRecord(str(e.get("step")), approver_text(e), str(e["ts"]), str(e.get("command_hash", "")))
            for e in st.events if e.get("type") == "approved"]


def approver_text(e: dict[str, Any]) -> str:
    """Who approved, on which host (and, from another host, with which key, through the repository)."""
    who = str(e.get("approver"))
    if e.get("approver_host"):
        who += f"@{e['approver_host']}"
    if e.get("remote"):
        who += f" (another host, key {e.get('key_id')}, through the repository)"
    return who


def refusals(st: RunState) -> list[dict[str, Any]]:
    """Approvals and take-overs that were refused, with why (the report names them: an attempt is a fact)."""
    return [e for e in st.events if e.get("type") in ("approval-refused", "takeover-refused", "request-refused")]


WATCHERS_TEXT = "not recorded (watchers only read the run; they leave no trace in it)"


def people_markdown(st: RunState) -> list[str]:
    """The report's "Drivers and approvals" section (Markdown lines)."""
    out = ["", "## Drivers and approvals", "", "| From | To | Driver | How |", "|---|---|---|---|"]
    for d in driver_spans(st):
        out.append(f"| {_t(d.start)} | {_t(d.end) if d.end else 'still driving'} | {d.user}@{d.host} | {_cell(d.how)} |")
    ok = approvals(st)
    if ok:
        out += ["", "| Step | Approved by | At | Command hash |", "|---|---|---|---|"]
        out += [f"| {a.step} | {a.approver} | {a.at} | `{a.command_hash[:16]}` |" for a in ok]
    refused = refusals(st)
    if refused:
        out += ["", "Refused:", ""]
        out += [f"- {e['ts']}: {EVENT_TEXT.get(str(e['type']), str(e['type']))} {_cell(event_detail(e))}"
                for e in refused]
    out += ["", f"Watchers: {WATCHERS_TEXT}."]
    return out


WINDOW_LABEL = "Data-loss window"


def rpo_rows(rpo: RpoFacts) -> list[tuple[str, str]]:
    """The RPO section as (label, value) rows, the same in every form of the report; the row labelled
    `WINDOW_LABEL` gets the verdict beside it in each form."""
    rows: list[tuple[str, str]] = []
    rows.append(("Target", format_duration(rpo.target_s) if rpo.target_s is not None else "none set"))
    if rpo.source_step:
        rows.append((
            "Recovery point",
            f"{fmt_time(rpo.recovery_point) if rpo.recovery_point else rpo.recovery_point_raw}"
            f" (output {rpo.source_output} of step {rpo.source_step}"
            f"{', a logical backup' if rpo.logical else ''})",
        ))
    lost = fmt_time(rpo.data_lost_at)
    rows.append(("Data lost at", lost + (" (the incident start)" if rpo.data_lost_is_incident_start else "")))
    if rpo.window_s is not None:
        rows.append((WINDOW_LABEL, window_text(rpo.window_s)))
    if rpo.rows_lost is not None:
        rows.append(("Rows lost", f"{rpo.rows_lost} (counted by step {rpo.rows_lost_step})"))
    return rows


# ---- Markdown ----------------------------------------------------------------------------------------


def render_markdown(st: RunState, titles: dict[str, str], now: datetime, debrief: Debrief | None = None) -> str:
    """The report in Markdown; `debrief`: a game-day run's debrief (runbook.gameday.load_debrief), given only once
    the run has ended, shown after the RTO and RPO."""
    rto = rto_facts(st, now)
    out: list[str] = []
    out.append(f"# Recovery report: {st.runbook_name}")
    out.append("")
    badge = {"rehearsal": "REHEARSAL (nothing was run)"}.get(st.mode) or MODE_BADGE.get(st.mode, st.mode)
    op = st.operator
    out += [
        f"- **Run**: `{st.run_id}` · **mode**: {badge} · **scenario**: {st.scenario} · **status**: {st.status}",
        f"- **Operator**: {op.get('user', '?')}@{op.get('host', '?')}",
        f"- **Target**: {st.target or '—'}",
        f"- **Incident start**: {_t(st.incident_start)} · **run started**: {_t(st.started_at)}"
        f" · **run closed**: {_t(st.ended_at)}",
    ]
    if st.detail:
        out.append(f"- **Closing note**: {st.detail}")
    out.append("")
    out.append("## RTO")
    out.append("")
    if rto.achieved_s is None:
        out.append("No incident start recorded.")
    else:
        verdict = f"**{rto.verdict}**" if rto.verdict in ("met", "missed", "impossible") else rto.verdict
        out.append("| | |\n|---|---|")
        out.append(f"| Target | {format_duration(rto.target_s)} |")
        out.append(f"| Achieved | {format_duration(rto.achieved_s)} ({rto.state_text}) — {verdict} |")
        if rto.restored:
            out.append(f"| Service restored at | {_t(rto.restored_at)} (step {rto.restored_step or 'end of run'}) |")
        if rto.protected_at is not None:
            after = f", {format_duration(rto.protected_after_s)} after the incident start" \
                if rto.protected_after_s is not None else ""
            out.append(f"| Protection restored | {_t(rto.protected_at)} (step {rto.protected_step}{after}: archiving "
                       "and fresh backups of the recovered server) |")
        if rto.closed_at and rto.closed_after_s is not None:
            out.append(f"| Run closed | {_t(rto.closed_at)} ({format_duration(rto.closed_after_s)} after the incident start) |")
        if rto.problem:
            out += ["", f"**The RTO cannot be trusted**: {rto.problem}."]
        if rto.rehearsal:
            out.append("")
            out.append("This was a rehearsal: commands were shown, not run; durations are the time the team took.")
    rpo = rpo_facts(st)
    if rpo is not None:
        out += ["", "## RPO", "", "| | |", "|---|---|"]
        for label, value in rpo_rows(rpo):
            if label == WINDOW_LABEL:
                value += f" — **{rpo.verdict}**" if rpo.verdict != "unknown" else " (no RPO target)"
            out.append(f"| {label} | {_cell(value)} |")
        if rpo.impossible:
            out += ["", f"**RPO: impossible, not met**: {rpo.problem}."]
        elif rpo.problem:
            out += ["", f"The RPO could not be measured: {rpo.problem}."]
        if rpo.logical_warning:
            out += ["", f"> {rpo.logical_warning}"]
    if debrief is not None:
        from runbook.gameday import debrief_markdown

        out += debrief_markdown(debrief)
    out.append("")
    out.append("## Steps")
    out.append("")
    out.append("| # | Step | Outcome | Exit | Attempts | Duration | Detail |")
    out.append("|---|---|---|---|---|---|---|")
    for i, sid in enumerate(st.order, start=1):
        s = st.steps[sid]
        exit_code = "" if s.exit_code is None else str(s.exit_code)
        dur = format_duration(s.duration_s) if s.duration_s is not None else ""
        out.append(
            f"| {i} | {_cell(titles.get(sid, sid))} | {outcome_text(s)} | {exit_code} | {s.attempt or ''} "
            f"| {dur} | {_cell(outcome_detail(s))} |"
        )
    skipped = [st.steps[s] for s in st.order if st.steps[s].status == StepStatus.skipped]
    if skipped:
        out += ["", "## Skipped steps", ""]
        out += [f"- **{_cell(titles.get(s.id, s.id))}**: {outcome_detail(s)}" for s in skipped]
    failed = [st.steps[s] for s in st.order if st.steps[s].status in (StepStatus.failed, StepStatus.interrupted)]
    if failed:
        out += ["", "## Failed or interrupted steps", ""]
        out += [f"- **{_cell(titles.get(s.id, s.id))}**: {s.status.value} — {s.detail}" for s in failed]
    checks = [(sid, c) for sid in st.order for c in st.steps[sid].checks]
    if checks:
        out += ["", "## Checks", "", "| Step | Check | Status | Hint |", "|---|---|---|---|"]
        out += [f"| {sid} | {_cell(c['name'])} | {c['status']} | {_cell(c.get('hint') or '')} |" for sid, c in checks]
    if st.notes:
        out += ["", "## Notes", ""]
        out += [f"- {n['ts']}{' (' + n['step'] + ')' if n.get('step') else ''}: {n['text']}" for n in st.notes]
    out += people_markdown(st)
    out += ["", "## Timeline", "", "| Time | Step | Event | Detail |", "|---|---|---|---|"]
    for e in st.events:
        t = str(e["type"])
        if t == "step-awaiting":
            continue
        out.append(
            f"| {e['ts']} | {e.get('step') or ''} | {EVENT_TEXT.get(t, t)} | {_cell(event_detail(e))} |"
        )
    if st.warnings:
        out += ["", "## Journal warnings", ""]
        out += [f"- {w}" for w in st.warnings]
    out.append("")
    out.append(f"_Journal: {len(st.events)} events, hash chain verified._")
    out.append("")
    return "\n".join(out)
