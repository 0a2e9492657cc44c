"""`runbook demo --headless --yes --scenario pitr --engine pgbackrest`: the same drill on real pgBackRest 2.45
(archive-push into the sandbox's pgBackRest repository, stanza-create, a full backup by `runbook basebackup`),
recovered with the shipped runbook.yaml unchanged (the `pitr` action restores with pgbackrest restore), and
re-protected (archive-push from the recovered server on its new timeline, a new pgBackRest backup, check green).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.journal import read_journal
from steps.engines.pgbackrest.info import LABEL
from steps.sandbox.build import DB, Sandbox
from tests.conftest import ROOT, run_cli
from tests.support.pgbackrest import pgbackrest_exe
from tests.support.pgcluster import make_base_dir


@pytest.fixture(scope="module")
def drill() -> Iterator[tuple[Sandbox, Path, object]]:
    pgbackrest_exe()  # fails, saying how to install it, when it is missing
    base = make_base_dir("runbook-demo-pgbr-")
    sb = Sandbox(base / "sandbox")
    state = base / "state"
    runbook = base / "runbook.yaml"  # a copy: the demo writes its profile beside it
    shutil.copyfile(ROOT / "runbook.yaml", runbook)
    r = run_cli("demo", "--headless", "--yes", "--scenario", "pitr", "--engine", "pgbackrest", "--runbook",
                str(runbook), "--dir", str(sb.base), "--state-dir", str(state), "--files", "5", timeout=500)
    try:
        yield sb, state, r
    finally:
        run_cli("demo", "--down", "--dir", str(sb.base), timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_the_pitr_drill_on_pgbackrest_completes_and_the_table_is_back(drill) -> None:
    sb, state, r = drill
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr
    assert "on pgBackRest" in r.stdout and "stanza assetflow created" in r.stdout
    assert "DROP TABLE maintenance_records" in r.stdout and "demo: measured RTO" in r.stdout
    # the table the disaster dropped is back, exactly as it was just before
    at_target = json.loads((sb.base / "at-target.json").read_text())
    restored = sb.table_facts(DB)
    assert restored["public.maintenance_records"] == at_target["public.maintenance_records"]
    assert restored["public.maintenance_records"]["rows"] > 0
    writes = json.loads((sb.base / "writes.json").read_text())
    seqs = {int(s) for s in sb.server.psql("select detail->>'seq' from audit_log where actor = 'writer'",
                                           db=DB).split()}
    assert set(writes["acked_before_target"]) <= seqs and not set(writes["started_after_target"]) & seqs

    (run_dir,) = (state / "runs").iterdir()
    events = read_journal(run_dir / "journal.jsonl").events
    assert events[-1]["type"] == "run-finished" and events[-1]["status"] == "completed"
    outs = {(e["step"], e["name"]): e["value"] for e in events if e["type"] == "step-output"}
    assert outs[("pitr", "engine")] == "pgbackrest" and LABEL.match(str(outs[("pitr", "backup_id")]))
    assert outs[("pitr", "timeline")] == 2
    # re-protected through pgBackRest: a new backup of the recovered cluster, on its new timeline
    new_label = str(outs[("reprotect", "base_backup_id")])
    assert LABEL.match(new_label) and new_label.endswith("F")  # a full backup: nothing leans on the old timeline
    assert outs[("reprotect", "timeline")] == 2
    assert (sb.base / "pgbackrest" / "repo" / "backup" / "assetflow" / new_label).is_dir()
    # nothing of the product's own physical archive: the WAL went to pgBackRest
    sysid = str(outs[("pitr", "cluster")])
    assert not (sb.repo / "clusters" / sysid / "wal").exists() or not any((sb.repo / "clusters" / sysid / "wal").iterdir())


def test_engine_pgbackrest_without_pgbackrest_installed_says_how_to_install_it(tmp_path: Path) -> None:
    r = run_cli("demo", "--headless", "--yes", "--scenario", "pitr", "--engine", "pgbackrest", "--dir",
                str(tmp_path / "sb"), "--state-dir", str(tmp_path / "state"), env={"PATH": str(tmp_path)})
    assert r.returncode == 3, r.stdout + r.stderr
    assert "pgbackrest is not installed" in r.stderr and "apt-get install pgbackrest" in r.stderr
    assert not (tmp_path / "sb").exists()  # refused before anything is built
    r = run_cli("demo", "--headless", "--yes", "--scenario", "restore-latest", "--engine", "pgbackrest", "--dir",
                str(tmp_path / "sb"), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 3 and "--engine pgbackrest is for --scenario pitr" in r.stderr
    r = run_cli("demo", "--headless", "--yes", "--scenario", "pitr", "--engine", "pgbackrest", "--fault", "wal-gap",
                "--dir", str(tmp_path / "sb"), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 3 and "game-day faults are played on the product's own engine" in r.stderr, r.stderr
    assert not (tmp_path / "sb").exists()
