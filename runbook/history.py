"""What earlier runs of a runbook teach: expected step durations, the last good drill per scenario."""

from __future__ import annotations

import statistics
from pathlib import Path

from runbook.events import StepStatus
from runbook.state import RunState, list_runs


def past_runs(state_dir: Path, runbook_name: str, *, exclude: str | None = None) -> list[RunState]:
    return [
        r
        for r in list_runs(state_dir)
        if isinstance(r, RunState) and r.runbook_name == runbook_name and r.run_id != exclude
    ]


def expected_durations(runs: list[RunState], declared: dict[str, float]) -> dict[str, float]:
    """Median duration of each step's real (not rehearsed) successes; else the declared `expect_duration`."""
    seen: dict[str, list[float]] = {}
    for r in runs:
        if r.mode == "rehearsal":
            continue
        for s in r.steps.values():
            if s.status == StepStatus.succeeded and s.duration_s is not None and not s.rehearsed:
                seen.setdefault(s.id, []).append(s.duration_s)
    out = dict(declared)
    out.update({k: statistics.median(v) for k, v in seen.items()})
    return out
