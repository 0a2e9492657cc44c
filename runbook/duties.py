"""Timed duties: what the plan says to do again and again during a run ("post the next stakeholder update
every 30 minutes").

Two sources, one rule: a runbook-level `reminders:` entry is armed when the run starts; a step's `every:` (a
manual checklist or a `notify` step) is armed when that step succeeds. A duty is due `every` after it was armed,
then `every` after it was last done; doing it is a `reminder-done` event (journaled by the driver, on the
report's timeline). Nothing is re-run by itself: the engine never starts a step twice; the operator does the
duty and says so. A closed run has no duties.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from runbook.clock import parse_iso
from runbook.events import StepStatus
from runbook.model import Runbook
from runbook.state import RunState


@dataclass(frozen=True)
class Duty:
    id: str
    title: str
    every_s: float
    due_at: datetime
    last_done: datetime | None
    times_done: int

    def overdue_s(self, now: datetime) -> float:
        """Seconds past due (0 or less: not yet due)."""
        return (now - self.due_at).total_seconds()


def duties(rb: Runbook, st: RunState) -> list[Duty]:
    """The run's timed duties now, the soonest due first."""
    if st.closed or st.started_at is None:
        return []
    done: dict[str, list[datetime]] = {}
    for e in st.events:
        if e.get("type") == "reminder-done":
            done.setdefault(str(e.get("reminder")), []).append(parse_iso(str(e["ts"])))
    armed: list[tuple[str, str, timedelta, datetime]] = [(r.id, r.title, r.every, st.started_at)
                                                           for r in rb.reminders]
    for s in rb.steps:
        state = st.steps.get(s.id)
        if s.every is not None and state is not None and state.status == StepStatus.succeeded and state.ended_at:
            armed.append((s.id, s.display_title, s.every, state.ended_at))
    out = []
    for rid, title, every, since in armed:
        times = done.get(rid, [])
        last = max(times) if times else None
        out.append(Duty(rid, title, every.total_seconds(), (last or since) + every, last, len(times)))
    return sorted(out, key=lambda d: d.due_at)


def next_duty(rb: Any, st: RunState) -> Duty | None:
    """The soonest due duty, or None; `rb` may be a watcher's placeholder runbook (then None)."""
    if not isinstance(rb, Runbook):
        return None
    found = duties(rb, st)
    return found[0] if found else None
