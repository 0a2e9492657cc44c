"""Hand-made journals: a run's events as the engine writes them, with times in minutes from T0, folded
through the real `runbook.state.fold` (for facts only built-in actions produce, such as a recovery point)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from runbook.state import RunState, fold

T0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # the incident start


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


class JournalBuilder:
    """A journal's events, as the engine writes them, with times in minutes from T0."""

    def __init__(self, steps: list[str], *, mode: str = "drill", scenario: str = "restore-latest",
                 run_start: float = 0.0, data_lost_at: float | None = None, rto: float = 7200,
                 rpo: float = 300, params: dict[str, Any] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.add(run_start, "run-started", run_id="r1", runbook={"name": "AssetFlow PostgreSQL disaster recovery",
                 "path": "/x/runbook.yaml", "version": 1}, scenario=scenario, mode=mode,
                 target="db1:5432/assetflow_prod", incident_start=at(0),
                 data_lost_at=at(data_lost_at if data_lost_at is not None else 0),
                 operator={"user": "alice", "host": "ops1", "pid": 1}, params=params or {},
                 targets={"rto_s": rto, "rpo_s": rpo}, steps=steps)

    def add(self, minutes: float, type_: str, **data: Any) -> JournalBuilder:
        self.events.append({"seq": len(self.events) + 1, "ts": at(minutes), "type": type_, **data})
        return self

    def shown(self, minutes: float, step: str, kind: str = "run", command: str | None = "true") -> JournalBuilder:
        return self.add(minutes, "step-awaiting", step=step, command=command, kind=kind)

    def ran(self, start: float, end: float, step: str, *, status: str = "succeeded", exit_code: int = 0,
            rto_end: bool = False, attempt: int = 1, detail: str = "") -> JournalBuilder:
        self.add(start, "step-started", step=step, attempt=attempt, command="true")
        return self.add(end, "step-finished", step=step, attempt=attempt, status=status, exit_code=exit_code,
                        duration_s=(end - start) * 60, detail=detail or f"exit {exit_code}", rto_end=rto_end)

    def manual(self, start: float, end: float, step: str, *, rto_end: bool = False) -> JournalBuilder:
        self.shown(start, step, kind="manual", command=None)
        return self.add(end, "step-finished", step=step, status="succeeded", detail="checklist done",
                        duration_s=(end - start) * 60, rto_end=rto_end)

    def output(self, minutes: float, step: str, name: str, value: Any) -> JournalBuilder:
        return self.add(minutes, "step-output", step=step, name=name, value=value)

    def finish(self, minutes: float, status: str = "completed", detail: str = "") -> JournalBuilder:
        return self.add(minutes, "run-finished", status=status, detail=detail)

    def state(self) -> RunState:
        return fold("r1", self.events)


def logical_drill(*, note: str = "restore slower than usual: disk busy") -> JournalBuilder:
    """A realistic scenario-1 drill: 20 minutes to start, a logical backup 9 h old, 42 rows lost."""
    steps = ["communicate", "isolate", "provision", "fetch", "create-db", "restore", "verify", "switch-over",
             "maintenance-off", "reprotect", "all-clear"]
    b = JournalBuilder(steps, run_start=20)
    b.manual(20, 23, "communicate")
    b.shown(23, "isolate").ran(23.2, 24, "isolate")
    b.shown(24, "provision").ran(24.1, 25.5, "provision", status="failed", exit_code=2, detail="exit 2")
    b.add(26, "retry-requested", step="provision")
    b.ran(26, 27, "provision", attempt=2)
    b.shown(27, "fetch", kind="action", command='fetch-latest-backup {"dest": "/var/tmp/restore"}')
    b.add(27.1, "step-started", step="fetch", attempt=1, command="fetch-latest-backup")
    b.output(33, "fetch", "snapshot_time", (T0 - timedelta(hours=9)).isoformat())
    b.output(33, "fetch", "backup_dir", "/var/tmp/restore/20261124T180000Z")
    b.add(35, "step-finished", step="fetch", attempt=1, status="succeeded", exit_code=0, duration_s=470,
          detail="exit 0", rto_end=False)
    b.shown(35, "create-db").ran(36, 36.5, "create-db")
    b.shown(36.5, "restore").add(37, "step-started", step="restore", attempt=1, command="pg_restore")
    b.add(45, "note", step="restore", text=note)
    b.add(58, "step-finished", step="restore", attempt=1, status="succeeded", exit_code=0, duration_s=1260,
          detail="exit 0", rto_end=False)
    b.shown(58, "verify", kind="action", command="verify-database {}")
    b.add(58.1, "step-started", step="verify", attempt=1, command="verify-database")
    for name, status, hint in [("tables present", "ok", ""), ("row counts match the manifest", "ok", ""),
                               ("smoke: select count(*) > 0 from assets", "warning", "slow: 4.2 s")]:
        b.add(60, "step-check", step="verify", name=name, status=status, hint=hint)
    b.output(61, "verify", "rows_lost", 42)
    b.add(62, "step-finished", step="verify", attempt=1, status="succeeded", exit_code=0, duration_s=230,
          detail="exit 0", rto_end=False)
    b.manual(62, 66, "switch-over", rto_end=True)
    b.shown(66, "maintenance-off")
    b.add(67, "step-skipped", step="maintenance-off", reason="the load balancer was never switched: sandbox")
    b.manual(67, 88, "reprotect")
    b.manual(88, 90, "all-clear")
    return b.finish(90)
