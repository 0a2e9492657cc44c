"""wal-gap: a WAL segment between the base backup and the recovery target is missing from the sandbox's archive.

After the backups, the application writes two batches, each closed by a WAL switch and archived; the second
batch's segment is then removed from the sandbox's repository (as a lost upload, a bad retention or a disk error
would). No recovery crosses the hole: the target just before the wrong DROP is past it. The tool names the gap
from the archive's listing (provision-pitr: "WAL continuity", a warning when the listing alone cannot prove the
target is past it), and the replay ends at it: the pitr step fails naming the best reachable point. The operator
recovers to it (`target_kind latest` with `accept_gap`), losing the second batch and everything after it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from steps.sandbox.faults import Fault, GameContext, register
from steps.sandbox.faults._pitr_common import Events, completed, earliest, first, switch_wal, when
from steps.sandbox.faults.guard import FaultRefused, sandbox_path

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox

ROWS = 100  # rows per batch


def _batch(sb: Sandbox, n: int) -> str:
    from steps.sandbox.build import DB

    sb.server.psql("INSERT INTO audit_log (actor, action, detail) SELECT 'app', 'import', "
                   f"jsonb_build_object('batch', {n}, 'row', g) FROM generate_series(1, {ROWS}) g", db=DB)
    return datetime.now(UTC).isoformat()


def inject(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    sysid = sb.source_cluster
    if not sysid.isdigit():
        raise FaultRefused(f"the sandbox {sb.base} names no cluster: no archive to damage")
    first_at = _batch(sb, 1)
    kept = switch_wal(sb)
    time.sleep(1.0)
    second_at = _batch(sb, 2)
    lost = switch_wal(sb)
    wal = sandbox_path(sb, sb.repo / "clusters" / sysid / "wal")
    removed = [p for p in wal.iterdir() if p.name.split(".", 1)[0] == lost and p.is_file() and not p.is_symlink()]
    if not removed:
        raise FaultRefused(f"segment {lost} is not in the sandbox's archive {wal}")
    for p in removed:
        sandbox_path(sb, p).unlink()
    return {"removed_segment": lost, "removed_files": [p.name for p in removed], "last_segment_before_gap": kept,
            "batch_kept_at": first_at, "batch_lost_at": second_at, "rows_per_batch": ROWS}


def evidence_event(events: Events) -> float | None:
    """The archive's listing names the gap (provision-pitr or pitr), or the replay ends at it."""
    listing = first(events, "step-check", name="WAL continuity", statuses=("warning", "failed"))
    replay = first(events, "step-finished", step="pitr", statuses=("failed",), text="the WAL after it is missing")
    return earliest(when(listing), when(replay))


def handled(events: Events) -> bool:
    """The recovery went to the best reachable point (or another target before the gap) and the run completed."""
    return completed(events) and first(events, "step-finished", step="pitr", statuses=("succeeded",)) is not None


FAULT = register(Fault(
    name="wal-gap",
    title="a WAL segment after the base backup is missing: PITR cannot reach the target",
    scenarios=("pitr",),
    story=f"After the backups the application wrote two batches of {ROWS} rows into audit_log, each closed by a WAL "
          "switch; the second batch's segment was deleted from the sandbox's WAL archive. Recovery can replay only "
          "up to the end of the first batch's segment: the target (just before the wrong DROP) is past the gap.",
    evidence="provision-pitr: the check \"WAL continuity\" names the missing segment and the LSN recovery can "
             "reach; the pitr step fails with \"target beyond the archived WAL\" and names the best reachable "
             "point (the last transaction before the gap) and how to recover to it.",
    handling="Read the gap and the best reachable point, accept the larger data loss (tell the team), and recover to "
             "it: `runbook resume RUN_ID --set target_kind=latest --set accept_gap=true`, then retry the pitr step "
             "(its failed attempt is moved aside). Before that, look for the segment elsewhere (the old server's "
             "pg_wal): with it back in the archive the original target is reachable.",
    phase="after-backup",
    inject=inject,
    evidence_event=evidence_event,
    handled=handled,
))
