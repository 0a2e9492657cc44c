"""Is each scenario still proven? The last successful live or drill run per (runbook, scenario).

A scenario is **stale** when it has had no successful (completed) live or drill run for 30 days; a
rehearsal proves nothing about the backups, so it never counts. Pure functions over folded runs with an
injectable `now`, shared by `runbook runs`, `runbook status` and the TUI's start screen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from runbook.state import RunState

STALE_AFTER = timedelta(days=30)
PROVING_MODES = ("live", "drill")


@dataclass(frozen=True)
class Drill:
    """The last good run of one scenario of one runbook; `run_id` is None when there never was one."""

    runbook: str
    scenario: str
    run_id: str | None
    mode: str | None
    rto_s: float | None  # the measured RTO of that run
    rto_target_s: float | None
    ended_at: datetime | None
    age_days: float | None  # days from `ended_at` to `now` (never negative)
    stale: bool

    @property
    def age_text(self) -> str:
        """`today`, `1 day`, `12 days`; `never` without a good run."""
        if self.age_days is None:
            return "never"
        days = int(self.age_days)
        if days == 0:
            return "today"
        return f"{days} day" + ("" if days == 1 else "s")


def is_good_drill(run: RunState) -> bool:
    """A run that proves its scenario: live or drill, and completed."""
    return run.mode in PROVING_MODES and run.status == "completed" and run.ended_at is not None


def last_good_drills(
    runs: Iterable[RunState | tuple[str, str]],
    now: datetime,
    *,
    scenarios: Mapping[str, Iterable[str]] | None = None,
    stale_after: timedelta = STALE_AFTER,
) -> dict[tuple[str, str], Drill]:
    """Per (runbook name, scenario): the newest good run, its age and whether the scenario is stale.

    `runs` may hold unreadable runs (`(run id, why)` tuples, as `list_runs` gives them); they are ignored.
    Every (runbook, scenario) seen in any run appears; `scenarios` (runbook name -> its scenario names,
    from a runbook file) adds those never run at all, which are stale. Sorted by runbook, then scenario.
    """
    seen: set[tuple[str, str]] = set()
    best: dict[tuple[str, str], RunState] = {}
    for r in runs:
        if not isinstance(r, RunState):
            continue
        key = (r.runbook_name, r.scenario)
        seen.add(key)
        if is_good_drill(r):
            cur = best.get(key)
            if cur is None or (cur.ended_at is not None and r.ended_at is not None and r.ended_at > cur.ended_at):
                best[key] = r
    for name, names in (scenarios or {}).items():
        seen.update((name, s) for s in names)
    out: dict[tuple[str, str], Drill] = {}
    for key in sorted(seen):
        good = best.get(key)
        if good is None or good.ended_at is None:
            out[key] = Drill(key[0], key[1], None, None, None, None, None, None, stale=True)
            continue
        age = max(timedelta(0), now - good.ended_at)
        out[key] = Drill(
            runbook=key[0], scenario=key[1], run_id=good.run_id, mode=good.mode, rto_s=good.rto_s(now),
            rto_target_s=good.targets.get("rto_s"), ended_at=good.ended_at, age_days=age.total_seconds() / 86400,
            stale=age > stale_after,
        )
    return out
