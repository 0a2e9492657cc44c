"""The RTO clock: elapsed since the incident start, remaining against the target, projected finish.

Pure arithmetic over a run's state, so the TUI, the headless console and the report agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from runbook.state import RunState


@dataclass(frozen=True)
class RtoClock:
    elapsed_s: float
    target_s: float
    stopped: bool  # the service is back (the rto_end step succeeded)
    projected_s: float | None  # elapsed + expected durations of the steps left; None if none is known
    unknown_steps: int  # steps left whose duration nobody knows (the projection is a lower bound then)
    impossible: bool = False  # the end is before the incident start: a wrong start, or a clock gone backwards

    @property
    def remaining_s(self) -> float:
        return self.target_s - self.elapsed_s

    @property
    def fraction(self) -> float:
        return self.elapsed_s / self.target_s if self.target_s > 0 else 0.0

    @property
    def level(self) -> str:
        """green, then amber past 75 % of the target, red past it (and when the clock cannot be right)."""
        if self.impossible or self.elapsed_s > self.target_s:
            return "red"
        return "amber" if self.fraction >= 0.75 else "green"

    @property
    def verdict(self) -> str:
        if self.impossible:
            return "impossible"
        if self.stopped:
            return "met" if self.elapsed_s <= self.target_s else "missed"
        if self.projected_s is None:
            return "unknown"
        if self.projected_s > self.target_s:
            return "at risk"
        return "on track"


def rto_clock(
    st: RunState,
    now: datetime,
    expected: dict[str, float],
    remaining_steps: list[str],
) -> RtoClock:
    """`expected` maps step ids to expected seconds; `remaining_steps` are those not yet done."""
    target = float(st.targets.get("rto_s", 7200))
    start = st.incident_start or st.started_at or now
    end = st.rto_end_at or now
    impossible = end < start
    elapsed = max(0.0, (end - start).total_seconds())
    stopped = st.rto_end_at is not None
    if stopped:
        return RtoClock(elapsed, target, True, elapsed, 0, impossible)
    known = [expected[s] for s in remaining_steps if s in expected]
    unknown = len(remaining_steps) - len(known)
    projected = elapsed + sum(known) if (known or not remaining_steps) else None
    return RtoClock(elapsed, target, False, projected, unknown, impossible)
