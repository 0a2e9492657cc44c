"""`runbook demo --headless --yes`: a real disaster and a real recovery, end to end, as CI runs it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.journal import read_journal
from steps.sandbox.assetflow import dir_tree_digest
from steps.sandbox.build import DB, Sandbox
from tests.conftest import ROOT, run_cli
from tests.support.checkout import changed, git_status, snapshot
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (reprotect's archive_command)


@pytest.fixture(scope="module", autouse=True)
def checkout_before() -> tuple[dict[str, tuple[int, int]], str]:
    """The checkout before this module's demos ran (see the last test)."""
    return snapshot(ROOT), git_status(ROOT)


def runbook_copy(base: Path) -> Path:
    """The shipped runbook, copied: the demo writes its profile beside the runbook, never into the checkout."""
    path = base / "runbook.yaml"
    shutil.copyfile(ROOT / "runbook.yaml", path)
    return path


@pytest.fixture(scope="module")
def drill(server_runbook: str) -> Iterator[tuple[Sandbox, Path, object]]:  # noqa: F811
    base = make_base_dir("runbook-demo-")
    sb = Sandbox(base / "sandbox")
    state = base / "state"
    r = run_cli("demo", "--headless", "--yes", "--runbook", str(runbook_copy(base)), "--dir", str(sb.base),
                "--state-dir", str(state), "--files", "60", timeout=300, env={"RUNBOOK_SERVER_RUNBOOK": server_runbook})
    try:
        yield sb, state, r
    finally:
        run_cli("demo", "--down", "--dir", str(sb.base), timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_the_drill_completes_and_prints_the_measured_rto(drill) -> None:
    _sb, _state, r = drill
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
    assert "DISASTER" in r.stdout
    assert "demo: measured RTO" in r.stdout and "met" in r.stdout
    profile = _sb.base.parent / "sandbox.profile.yaml"  # beside the runbook it was given
    assert f"demo: profile: {profile}" in r.stdout and profile.exists()


def test_the_restored_database_equals_the_backup(drill) -> None:
    sb, _state, r = drill
    assert r.returncode == 0, r.stderr
    at_backup = json.loads((sb.base / "at-backup.json").read_text())
    restored = sb.table_facts(DB)
    assert restored == at_backup  # every table: same row count, same content checksum


def test_rows_written_after_the_backup_are_missing_and_counted(drill) -> None:
    sb, state, r = drill
    assert r.returncode == 0, r.stderr
    at_disaster = json.loads((sb.base / "at-disaster.json").read_text())
    restored = sb.table_facts(DB)
    lost = sum(at_disaster[t]["rows"] - restored[t]["rows"] for t in at_disaster)
    assert lost == 50
    (run_dir,) = (state / "runs").iterdir()
    outputs = {e["name"]: e["value"] for e in read_journal(run_dir / "journal.jsonl").events if e["type"] == "step-output"}
    assert outputs["rows_lost"] == lost


def test_attachments_are_byte_identical(drill) -> None:
    sb, _state, r = drill
    assert r.returncode == 0, r.stderr
    before = json.loads((sb.base / "attachments-at-backup.json").read_text())
    assert len(before) == 60
    assert dir_tree_digest(sb.uploads) == before
    # the snapshot of the backup run the database came from, a few seconds after the dump's snapshot
    (run_dir,) = (_state / "runs").iterdir()
    events = read_journal(run_dir / "journal.jsonl").events
    outs = {(e["step"], e["name"]): e["value"] for e in events if e["type"] == "step-output"}
    assert outs[("attachments", "attachments_id")] == outs[("fetch", "backup_id")]
    assert -60 < outs[("attachments", "distance_s")] <= 0
    assert outs[("attachments", "distance")].startswith("attachments snapshot ")
    assert f"of backup run {outs[('fetch', 'backup_id')]}" in outs[("attachments", "distance")]


def test_the_run_is_a_drill_with_a_report(drill) -> None:
    _sb, state, r = drill
    assert r.returncode == 0, r.stderr
    (run_dir,) = (state / "runs").iterdir()
    events = read_journal(run_dir / "journal.jsonl").events
    assert events[0]["mode"] == "drill" and events[0]["scenario"] == "restore-latest"
    assert events[-1]["type"] == "run-finished" and events[-1]["status"] == "completed"
    rep = run_cli("report", run_dir.name, "--state-dir", str(state))
    assert rep.returncode == 0 and "## RTO" in rep.stdout and "DRILL" in rep.stdout
    # the sandbox's password is in its secrets file: masked everywhere
    secret = [ln.split("=", 1)[1] for ln in (_sb.env_file.read_text().splitlines()) if ln.startswith("DB_PASSWORD=")][0]
    for p in state.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


def test_the_recovered_cluster_is_protected_again_in_its_new_cluster_directory(drill) -> None:
    sb, state, r = drill
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr
    (run_dir,) = (state / "runs").iterdir()
    outputs = {e["name"]: e["value"] for e in read_journal(run_dir / "journal.jsonl").events
               if e["type"] == "step-output"}
    old = outputs["cluster"]  # the cluster the backup was taken of (fetch-latest-backup says)
    new = sb.system_identifier()
    assert new != old and outputs["system_identifier"] == new  # a logical restore: a new cluster
    clusters = sb.repo / "clusters"
    # archiving on, into the new cluster's own directory, and a forced switch arrived there
    assert sb.server.psql("show archive_mode") == "on" and "wal-push" in sb.server.psql("show archive_command")
    assert any((clusters / new / "wal").glob("0000000100000000000000*.zst"))
    assert not (clusters / old / "wal").exists()  # nothing written into the old cluster's directory
    # a fresh base backup and a logical backup of the recovered cluster, both readable
    (base,) = (clusters / new / "base").iterdir()
    assert base.name == outputs["base_backup_id"] and (base / "manifest.json").exists()
    (logical,) = (clusters / new / "logical" / DB).iterdir()
    assert logical.name == outputs["logical_backup_id"] and (logical / "manifest.json").exists()
    assert outputs["protected_at"]
    rep = run_cli("report", run_dir.name, "--state-dir", str(state))
    assert "Protection restored" in rep.stdout


def test_the_debrief_of_a_real_drill_against_its_clean_baseline(drill) -> None:
    """runbook.gameday over this real run's journal, as if a game day had been played on it: a fault whose evidence
    is the rows-lost warning of step verify; a clean recovery loses exactly what the sandbox's clean baseline says
    (steps.sandbox.faults.game.clean_baseline, from the backups as taken), so no data points are lost; --yes never
    acts on the warning, so detect costs its whole share."""
    from datetime import datetime
    from math import isclose

    from runbook.gameday import debrief, debrief_lines
    from runbook.state import load_state
    from steps.sandbox.faults import Fault
    from steps.sandbox.faults.game import clean_baseline
    from steps.sandbox.faults.record import GameDay

    sb, state, r = drill
    assert r.returncode == 0, r.stderr
    (run_dir,) = (state / "runs").iterdir()
    st = load_state(state, run_dir.name)
    assert st.incident_start is not None
    baseline = clean_baseline(sb, st.incident_start)
    assert baseline["rows_lost"] == 50 and baseline["rpo_s"] > 0

    def warned(events: list[dict[str, object]]) -> float | None:
        return next((datetime.fromisoformat(str(e["ts"])).timestamp() for e in events
                     if e["type"] == "step-check" and e.get("step") == "verify" and e.get("status") == "warning"), None)

    fault = Fault(name="rows-lost", title="rows were written after the backup", scenarios=("restore-latest",),
                  story="the application kept writing", evidence="verify warns of the rows lost", handling="report them",
                  phase="before-run", inject=lambda sb, ctx: {}, evidence_event=warned, handled=None)
    game = GameDay(game_id="gd-20261125T030000Z-cafe", seed=1, scenario="restore-latest", faults=[fault.name],
                   operator="ci", created_at=st.incident_start.isoformat(), run_id=st.run_id, baseline=baseline)
    d = debrief(st, game, {fault.name: fault}, datetime.now(st.incident_start.tzinfo))
    assert d.restored and d.status == "completed" and d.rows_lost == 50 and d.baseline_rows_lost == 50
    assert d.window_s is not None and isclose(d.window_s, baseline["rpo_s"], abs_tol=0.01)
    (f,) = d.faults
    assert f.evidence_at is not None and f.acted_at is None  # --yes confirmed the next step: no action
    assert {x.rule: x.points for x in d.deductions} == {"detect": 20, "recover": 0, "data": 0, "mistakes": 0}
    assert d.score == 80 and d.rto_s is not None and 0 < d.rto_s < 300
    text = "\n".join(ln.text for ln in debrief_lines(d))
    assert "acted on: never" in text and "rows lost 50 (clean run 50)" in text


def test_down_removes_the_sandbox_and_a_second_demo_rebuilds(tmp_path: Path, server_runbook: str) -> None:  # noqa: F811
    base = make_base_dir("runbook-demo2-")
    try:
        sb = Sandbox(base / "sb")
        state = base / "state"
        runbook = runbook_copy(base)
        for _ in range(2):  # a second demo on the same directory reuses the cluster and rebuilds the data
            r = run_cli("demo", "--headless", "--yes", "--runbook", str(runbook), "--dir", str(sb.base),
                        "--state-dir", str(state), "--files", "5", timeout=300,
                        env={"RUNBOOK_SERVER_RUNBOOK": server_runbook})
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr
        assert len(list((state / "runs").iterdir())) == 2
        r = run_cli("demo", "--down", "--dir", str(sb.base), timeout=120)
        assert r.returncode == 0 and not sb.base.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_down_without_a_sandbox_says_there_is_nothing_to_remove(tmp_path: Path) -> None:
    r = run_cli("demo", "--down", "--dir", str(tmp_path / "never-made"), timeout=60)
    assert r.returncode == 0 and "no sandbox at" in r.stdout + r.stderr and "nothing to remove" in r.stdout + r.stderr
    assert not (tmp_path / "never-made").exists()


def test_the_demo_tests_leave_the_checkout_as_it_was(checkout_before) -> None:
    """Last in this module: every demo above ran, and no file under the checkout was created or written (the
    profile went beside the runbook's copy). A file edited by hand meanwhile shows here too: run again."""
    files, status = checkout_before
    assert changed(files, snapshot(ROOT)) == []
    assert git_status(ROOT) == status
