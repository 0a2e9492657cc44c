"""What the PITR and environment faults read from a run's journal (evidence, handling) and do to the sandbox's
primary (a WAL switch waited for until archived). Not a fault module (its name starts with `_`)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runbook.errors import RunbookError

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox

Events = list[dict[str, Any]]


def at(e: dict[str, Any]) -> float:
    """An event's time, seconds since the epoch."""
    return datetime.fromisoformat(str(e["ts"])).timestamp()


def first(events: Events, kind: str, *, step: str | None = None, name: str | None = None,
          statuses: tuple[str, ...] = (), text: str | None = None, after: float | None = None) -> dict[str, Any] | None:
    """The first event of `kind` (of that step, check name or output name, with one of `statuses`, whose detail
    or hint holds `text`, at or after `after`)."""
    for e in events:
        if e.get("type") != kind or (step is not None and e.get("step") != step):
            continue
        if name is not None and e.get("name") != name:
            continue
        if statuses and e.get("status") not in statuses:
            continue
        if text is not None and text not in f"{e.get('detail', '')} {e.get('hint', '')}":
            continue
        if after is not None and at(e) < after:
            continue
        return e
    return None


def when(e: dict[str, Any] | None) -> float | None:
    return None if e is None else at(e)


def earliest(*times: float | None) -> float | None:
    found = [t for t in times if t is not None]
    return min(found) if found else None


def completed(events: Events) -> bool:
    """The run was closed as completed (its last run-finished)."""
    done = [e for e in events if e.get("type") == "run-finished"]
    return bool(done) and done[-1].get("status") == "completed"


def failed_check(check: str) -> Any:
    """A fault's `evidence_event`: when the check named `check` first failed."""
    def evidence_event(events: Events) -> float | None:
        return when(first(events, "step-check", name=check, statuses=("failed",)))
    return evidence_event


def check_passed_after_failing(check: str) -> Any:
    """A fault's `handled`: the check named `check` failed, passed after that (what it named was put right), and
    the run completed."""
    def handled(events: Events) -> bool:
        failed = first(events, "step-check", name=check, statuses=("failed",))
        if failed is None:
            return False
        return completed(events) and first(events, "step-check", name=check, statuses=("ok",),
                                           after=when(failed)) is not None
    return handled


def switch_wal(sb: Sandbox, timeout: float = 60) -> str:
    """pg_switch_wal() on the sandbox's primary; returns the segment it closed, once it is archived."""
    srv = sb.server
    seg = srv.psql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while True:
        last = srv.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if last and last[:24] >= seg:
            return seg
        if time.monotonic() > deadline:
            raise RunbookError(f"WAL segment {seg} was not archived within {timeout:.0f} s; see {srv.log}")
        time.sleep(0.2)
