"""`runbook demo --headless --yes --scenario pitr`: WAL archiving, a base backup, a stream of writes, a wrong
DROP TABLE, and a real point-in-time recovery to just before it, end to end, as CI runs it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runbook.journal import read_journal
from steps.sandbox.assetflow import dir_tree_digest
from steps.sandbox.build import DB, Sandbox
from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (archive/restore_command)


@pytest.fixture(scope="module")
def drill(server_runbook: str) -> Iterator[tuple[Sandbox, Path, object]]:  # noqa: F811
    base = make_base_dir("runbook-demo-pitr-")
    sb = Sandbox(base / "sandbox")
    state = base / "state"
    runbook = base / "runbook.yaml"  # a copy: the demo writes its profile beside it, never into the checkout
    shutil.copyfile(ROOT / "runbook.yaml", runbook)
    r = run_cli("demo", "--headless", "--yes", "--scenario", "pitr", "--runbook", str(runbook), "--dir", str(sb.base),
                "--state-dir", str(state), "--files", "5", timeout=400, env={"RUNBOOK_SERVER_RUNBOOK": server_runbook})
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


def test_the_attachments_wiped_by_the_disaster_are_restored_from_the_snapshot_before_the_recovery_point(drill) -> None:
    sb, state, r = drill
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr
    assert "attachments wiped" in r.stdout
    before = json.loads((sb.base / "attachments-at-backup.json").read_text())
    assert len(before) == 5
    assert dir_tree_digest(sb.uploads) == before  # byte for byte, after the disaster emptied the directory
    (run_dir,) = (state / "runs").iterdir()
    events = read_journal(run_dir / "journal.jsonl").events
    outs = {(e["step"], e["name"]): e["value"] for e in events if e["type"] == "step-output"}
    point = datetime.fromisoformat(outs[("pitr", "recovery_point")])
    taken = datetime.fromisoformat(outs[("pitr-attachments", "attachments_time")])
    distance = outs[("pitr-attachments", "distance_s")]
    # the daily backup ran just before the writes: its snapshot is the newest not after the recovery point
    assert taken <= point and 0 <= distance < 120
    assert abs((point - taken).total_seconds() - distance) < 0.01
    said = outs[("pitr-attachments", "distance")]
    assert said.startswith(f"attachments snapshot {taken.isoformat()}, ") and "before the recovery point" in said
    assert said in r.stdout  # in the step's output, not only in the journal
    notified = next(e for e in events if e["type"] == "step-finished" and e.get("step") == "recovery-point")
    assert notified["status"] == "succeeded"


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


def test_the_recovered_cluster_archives_on_the_new_timeline_with_a_fresh_base_backup(drill) -> None:
    sb, state, r = drill
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr
    (run_dir,) = (state / "runs").iterdir()
    events = read_journal(run_dir / "journal.jsonl").events
    outputs = {e["name"]: e["value"] for e in events if e["type"] == "step-output"}
    sysid = sb.system_identifier(sb.pitr_datadir)
    assert outputs["system_identifier"] == sysid and outputs["timeline"] == 2  # the same cluster, a new timeline
    wal = sb.repo / "clusters" / sysid / "wal"
    assert (wal / "00000002.history.zst").exists()
    assert any(wal.glob("00000002" + "[0-9A-F]" * 16 + ".zst"))  # the new timeline's segments arrive
    assert sb.server.psql("show archive_mode") == "on"
    # no segment of the old timeline was written after re-protection began (wal-push never overwrites)
    started = next(datetime.fromisoformat(e["ts"]) for e in events
                   if e["type"] == "step-started" and e.get("step") == "reprotect")
    old = list(wal.glob("00000001*.zst"))
    assert old and all(datetime.fromtimestamp(p.stat().st_mtime, UTC) < started for p in old)
    # a fresh base backup, taken on timeline 2 after the recovery, and a logical backup
    bases = sorted((sb.repo / "clusters" / sysid / "base").iterdir())
    newest = json.loads((bases[-1] / "manifest.json").read_text())
    assert newest["timeline"] == 2 and bases[-1].name == outputs["base_backup_id"] and len(bases) == 2
    assert (sb.repo / "clusters" / sysid / "logical" / DB / outputs["logical_backup_id"] / "manifest.json").exists()
    rep = run_cli("report", run_dir.name, "--state-dir", str(state))
    assert "Protection restored" in rep.stdout
