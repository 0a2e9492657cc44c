"""wrong-target-time: the target time the operator is given is after the wrong DROP (typed wrong).

The profile's `target_time` (what the incident note handed to the operator says) is moved to a moment after the
DROP TABLE, while the application still wrote: the recovery "succeeds", promoted at that moment, and the table is
missing. The demo's own account of the disaster (the moment it struck, the moment just before it) is as always,
so the right time can be found. The verify step's expected-tables check catches it; the operator recovers again
in the same run with the right time (`runbook resume RUN_ID --redo-from pitr --set target_time=...`).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from steps.sandbox.faults import Fault, GameContext, register
from steps.sandbox.faults._pitr_common import Events, completed, first, when
from steps.sandbox.faults.guard import FaultRefused, sandbox_path

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox

TABLE = "maintenance_records"
CHECK = f"table {TABLE} exists"


def inject(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    from steps.sandbox.profile import set_params

    try:
        writes = json.loads(sandbox_path(sb, sb.base / "writes.json").read_text())
        disaster = datetime.fromisoformat(writes["disaster_at"])
        right = writes["target_time"]
    except (OSError, ValueError, KeyError) as e:
        raise FaultRefused(f"the sandbox {sb.base} has no PITR disaster to mistype the time of ({e})") from None
    # after the DROP, while the application still wrote (the writer runs on for seconds after it)
    wrong = (disaster + timedelta(milliseconds=ctx.rng.randrange(300, 900))).isoformat()
    before = set_params(sb, target_time=wrong)
    return {"target_time_given": wrong, "right_target_time": right, "disaster_at": writes["disaster_at"],
            "profile_target_time_was": before["target_time"], "table": TABLE}


def evidence_event(events: Events) -> float | None:
    return when(first(events, "step-check", step="verify-pitr", name=CHECK, statuses=("failed",)))


def handled(events: Events) -> bool:
    """The recovery was done again (pitr walked again after the failed check) and the table is there, completed."""
    failed = first(events, "step-check", step="verify-pitr", name=CHECK, statuses=("failed",))
    if failed is None:
        return False
    again = first(events, "step-finished", step="pitr", statuses=("succeeded",), after=when(failed))
    ok = first(events, "step-check", step="verify-pitr", name=CHECK, statuses=("ok",), after=when(failed))
    return completed(events) and again is not None and ok is not None


FAULT = register(Fault(
    name="wrong-target-time",
    title="the recovery target time handed to the operator is after the bad DROP",
    scenarios=("pitr",),
    story="The profile's target_time (the time on the incident note) was moved to a moment after the DROP TABLE "
          f"{TABLE}, while the application still wrote; the demo's own account of the disaster was left as it is.",
    evidence=f"The pitr step succeeds (recovered to a moment after the DROP); verify-pitr fails the check \"{CHECK}\", "
             "naming the recovery point and saying the target is after the table was lost.",
    handling="Do not go on with a database missing a table: find when the DROP happened (the demo printed it, the "
             "old server, the application's log), then recover again in the same run: `runbook resume RUN_ID "
             "--redo-from pitr --set target_time=<just before the DROP>` (the first attempt is moved aside).",
    phase="before-run",
    inject=inject,
    evidence_event=evidence_event,
    handled=handled,
))
