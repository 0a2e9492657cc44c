"""`archive-broken`: the primary's archive_command has been failing for days (scenario `pitr`).

After the base backup and the daily backup, the sandbox primary's archive_command is pointed at a repository
config that is not there (as when a config is moved and the archiver not told), so every segment after that
fails to archive, and the archive's age is set back by some days (the WAL objects' times, which `runbook status`
and `runbook check` read), inside the sandbox's repository only. `runbook status` is red before the drill
starts, and the runbook's `assess` step (the `status` action) shows it: the RPO exposure is days, the archiver
failing. The writes and the wrong DROP that follow never reach the archive: a PITR cannot reach the target time.

Scenario 1's sandbox does not archive (its status is red for that reason alone), so the fault is `pitr`'s.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from steps.sandbox.faults import Fault, GameContext, register
from steps.sandbox.faults.guard import FaultRefused, check_sandbox, sandbox_path

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox


def _ts(e: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(e["ts"])).timestamp()
    except (KeyError, ValueError):
        return None


def _inject_archive_broken(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    check_sandbox(sb)
    sysid = sb.source_cluster
    wal_dir = sandbox_path(sb, sb.repo / "clusters" / sysid / "wal")
    if not sysid or not wal_dir.is_dir():
        raise FaultRefused("archive-broken needs the sandbox's primary archiving into its repository (scenario pitr)")
    srv = sb.server
    current = srv.psql("SHOW archive_command")
    moved = sb.base / "repository.yaml.moved"  # nothing there: wal-push cannot read its config
    broken = current.replace(str(sb.config), str(moved))
    if broken == current:
        raise FaultRefused("the sandbox's archive_command does not name its repository config")
    # The sandbox starts its primary with the archive settings on the command line (they win over ALTER SYSTEM):
    # restarted with the broken command, as the sandbox builds it otherwise.
    srv.stop()
    srv.start("fsync=off", "archive_mode=on", "archive_timeout=30", "wal_level=replica",
              f"archive_command='{broken}'")
    if srv.psql("SHOW archive_command") != broken:
        raise FaultRefused("the sandbox's primary did not take the broken archive_command")
    days = 2 + ctx.rng.randrange(4)
    shift = days * 86400 + ctx.rng.randrange(3600)
    moved_back = 0
    from steps.repository.layout import wal_ledger_prefix

    for top in (wal_dir, sb.repo / wal_ledger_prefix(sysid)):
        top = sandbox_path(sb, top)
        if not top.is_dir():
            continue
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                path = sandbox_path(sb, os.path.join(root, name))
                st = os.lstat(path)
                os.utime(path, (st.st_atime - shift, st.st_mtime - shift), follow_symlinks=False)
                moved_back += 1
    # A segment to archive now: the archiver fails on it (pg_stat_archiver counts the failure).
    srv.psql("SELECT pg_switch_wal()")
    ctx.facts["archiving_broken"] = True
    return {"archive_command": broken, "days": days, "shift_s": shift, "objects_aged": moved_back,
            "cluster": sysid}


def _archive_evidence(events: list[dict[str, Any]]) -> float | None:
    """The assess step's RPO verdict red, or the pitr step failing short of its target."""
    for e in events:
        if e.get("type") == "step-check" and e.get("status") == "failed" and (
                (e.get("step") == "assess" and e.get("name") == "rpo") or e.get("step") == "pitr"):
            return _ts(e)
    return None


def _archive_handled(events: list[dict[str, Any]]) -> bool:
    """The operator recovered to what the archive holds (the pitr step succeeded after the evidence) and the run
    was brought to its end."""
    seen = _archive_evidence(events)
    if seen is None:
        return False
    pitr_ok = any(e.get("type") == "step-finished" and e.get("step") == "pitr" and e.get("status") == "succeeded"
                  and (_ts(e) or 0) >= seen for e in events)
    completed = any(e.get("type") == "run-finished" and e.get("status") == "completed" for e in events)
    return pitr_ok and completed


register(Fault(
    name="archive-broken",
    title="archive_command has been failing for days",
    scenarios=("pitr",),
    story="After the base backup, the primary's archive_command was pointed at a repository config that is not "
          "there, so no WAL segment was archived since; the archive's age was set back by some days (its objects' "
          "times, in the sandbox's repository), as if it had been failing unnoticed since.",
    evidence="`runbook status` is red before the drill starts. Step assess (the `status` action) fails its `rpo` "
             "check: the newest archived WAL is days old, the archiver failing (pg_stat_archiver). Step pitr "
             "cannot reach the target time: the WAL after the break was never archived.",
    handling="Read the assess step before choosing: the archive ends days ago, so the target time cannot be "
             "reached. Recover to what the archive holds (target_kind latest, or a target before the break), "
             "report the real data loss, and fix archive_command on the primary before anything else is lost.",
    phase="after-backup",
    inject=_inject_archive_broken,
    evidence_event=_archive_evidence,
    handled=_archive_handled,
))
