"""The recovery report: what happened in a run, from its journal alone, as Markdown.

Facts only: the timeline, each step's outcome, exit code and duration, skips with their reasons,
notes, and the RTO achieved against the target (service restored vs run closed).
"""

from __future__ import annotations

from datetime import datetime

from runbook.durations import format_duration
from runbook.events import StepStatus
from runbook.state import RunState

EVENT_TEXT = {
    "run-started": "run started",
    "run-resumed": "run resumed",
    "run-reopened": "run reopened after a failure",
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
}


def _t(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S %Z") if dt else "—"


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
    if t == "step-output":
        return f"{e.get('name')} = {e.get('value')}"
    if t == "step-check":
        return f"{e.get('name')}: {e.get('status')} {e.get('hint') or ''}".strip()
    if t in ("run-finished", "run-detached"):
        return f"{e.get('status', '')} {e.get('detail') or e.get('reason') or ''}".strip()
    if t == "step-interrupted":
        return str(e.get("detail", ""))
    if t == "lock-broken":
        prev = e.get("previous") or {}
        return f"from run {prev.get('run_id')} of {prev.get('user')}@{prev.get('host')}" if isinstance(prev, dict) else ""
    return ""


def render_markdown(st: RunState, titles: dict[str, str], now: datetime) -> str:
    rto_target = st.targets.get("rto_s", 0.0)
    rto = st.rto_s(now)
    restored = st.rto_end_at
    out: list[str] = []
    out.append(f"# Recovery report: {st.runbook_name}")
    out.append("")
    badge = {"live": "LIVE", "drill": "DRILL", "rehearsal": "REHEARSAL (nothing was run)"}.get(st.mode, st.mode)
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
    if rto is None:
        out.append("No incident start recorded.")
    else:
        met = rto <= rto_target
        state = "service restored" if restored else "service NOT restored (clock still running at report time)"
        verdict = "**met**" if (restored and met) else ("**missed**" if not met else "not yet decided")
        out.append("| | |\n|---|---|")
        out.append(f"| Target | {format_duration(rto_target)} |")
        out.append(f"| Achieved | {format_duration(rto)} ({state}) — {verdict} |")
        if restored:
            out.append(f"| Service restored at | {_t(restored)} (step {st.rto_end_step or 'end of run'}) |")
        if st.ended_at and st.incident_start:
            out.append(f"| Run closed | {_t(st.ended_at)} ({format_duration((st.ended_at - st.incident_start).total_seconds())} after the incident start) |")
        if st.mode == "rehearsal":
            out.append("")
            out.append("This was a rehearsal: commands were shown, not run; durations are the time the team took.")
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
            f"| {i} | {_cell(titles.get(sid, sid))} | {s.status.icon} {s.status.value} | {exit_code} | {s.attempt or ''} "
            f"| {dur} | {_cell(s.detail)} |"
        )
    skipped = [st.steps[s] for s in st.order if st.steps[s].status == StepStatus.skipped]
    if skipped:
        out += ["", "## Skipped steps", ""]
        out += [f"- **{_cell(titles.get(s.id, s.id))}**: {s.detail}" for s in skipped]
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
