"""`runbook demo --headless --yes --scenario pitr`: WAL archiving, a base backup, a stream of writes, a wrong
DROP TABLE, and a real point-in-time recovery to just before it, end to end, as CI runs it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from runbook.journal import read_journal
from steps.sandbox import DB, Sandbox
from tests.conftest import run_cli
from tests.pgcluster import make_base_dir


@pytest.fixture(scope="module")
def drill() -> Iterator[tuple[Sandbox, Path, object]]:
    base = make_base_dir("runbook-demo-pitr-")
    sb = Sandbox(base / "sandbox")
    state = base / "state"
    r = run_cli("demo", "--headless", "--yes", "--scenario", "pitr", "--dir", str(sb.base), "--state-dir", str(state),
                "--files", "5", timeout=400)
    try:
        yield sb, state, r
    finally:
        run_cli("demo", "--down", "--dir", str(sb.base), timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_the_pitr_drill_completes(drill) -> None:
    _sb, state, r = drill
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr
    assert "DISASTER" in r.stdout and "DROP TABLE maintenance_records" in r.stdout
    assert "demo: measured RTO" in r.stdout and "met" in r.stdout
    (run_dir,) = (state / "runs").iterdir()
    events = read_journal(run_dir / "journal.jsonl").events
    assert events[0]["mode"] == "drill" and events[0]["scenario"] == "pitr"
    assert events[-1]["type"] == "run-finished" and events[-1]["status"] == "completed"


def test_the_dropped_table_is_back_with_the_rows_up_to_the_target(drill) -> None:
    sb, _state, r = drill
    assert r.returncode == 0, r.stderr
    at_target = json.loads((sb.base / "at-target.json").read_text())
    restored = sb.table_facts(DB)
    # the table the disaster dropped is back, exactly as it was
    assert restored["public.maintenance_records"] == at_target["public.maintenance_records"]
    assert restored["public.maintenance_records"]["rows"] > 0
    for table in ("public.assets", "public.loans", "public.users"):
        assert restored[table] == at_target[table]
    # the stream of writes: everything acknowledged before the target is there, nothing started after it
    writes = json.loads((sb.base / "writes.json").read_text())
    seqs = {int(s) for s in sb.server.psql(
        "select detail->>'seq' from audit_log where actor = 'writer'", db=DB).split()}
    assert set(writes["acked_before_target"]) <= seqs
    assert not set(writes["started_after_target"]) & seqs
    assert len(writes["acked_before_target"]) >= 5


def test_the_report_has_the_recovery_point_and_timeline_2(drill) -> None:
    sb, state, r = drill
    assert r.returncode == 0, r.stderr
    (run_dir,) = (state / "runs").iterdir()
    outputs = {e["name"]: e["value"] for e in read_journal(run_dir / "journal.jsonl").events
               if e["type"] == "step-output"}
    assert outputs["timeline"] == 2
    point = datetime.fromisoformat(outputs["recovery_point"])
    writes = json.loads((sb.base / "writes.json").read_text())
    target = datetime.fromisoformat(writes["target_time"])
    disaster = datetime.fromisoformat(writes["disaster_at"])
    assert point <= target < disaster
    assert (target - point).total_seconds() < 1  # a write every 100 ms: the last one just before the target
    assert sb.server.psql("select pg_is_in_recovery()") == "f"
    rep = run_cli("report", run_dir.name, "--state-dir", str(state))
    assert rep.returncode == 0 and "output recovery_point of step pitr" in rep.stdout
