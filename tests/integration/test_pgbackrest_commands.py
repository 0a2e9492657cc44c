"""`runbook check` and `runbook status` with engine: pgbackrest, against real pgBackRest 2.45 and a real
PostgreSQL 15 primary archiving through `pgbackrest archive-push`: the same checks, verdicts and exit codes as
with the product's own engine; with archiving broken, both are red and say why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import run_cli
from tests.support.pgbackrest import PgbrPrimary, pgbr_primary_fixture  # noqa: F401 - fixtures
from tests.support.pitr_cluster import pitr_template_fixture  # noqa: F401 - fixtures

RUNBOOK = """\
version: 1
name: pgbr
targets: {rto: 2h, rpo: 5m}
steps:
  - id: recover
    title: Recover to the moment before the incident
    action: pitr
    with: {config: /nonexistent, pgdata: /nonexistent, target_kind: latest}
    modes: [live]
  - id: back
    title: Service back
    run: "true"
    confirm: none
    rto_end: true
"""


def check(p: PgbrPrimary) -> tuple[int, dict[str, dict[str, Any]], str]:
    r = run_cli("check", "-c", str(p.config), "--json", "--timeout", "10", timeout=180)
    assert r.returncode in (0, 1, 2), r.stdout + r.stderr
    return r.returncode, {c["name"]: c for c in json.loads(r.stdout)["checks"]}, r.stdout


def status(p: PgbrPrimary, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    rb = tmp_path / "runbook.yaml"
    rb.write_text(RUNBOOK)
    r = run_cli("status", str(rb), "-c", str(p.config), "--state-dir", str(tmp_path / "state"), "--json", timeout=180)
    assert r.returncode in (0, 1, 2, 3), r.stdout + r.stderr
    return r.returncode, json.loads(r.stdout)


def test_check_and_status_read_pgbackrest_and_go_red_when_archiving_breaks(pgbr_primary: PgbrPrimary,
                                                                          tmp_path: Path) -> None:
    p = pgbr_primary
    code, checks, _ = check(p)  # no backup yet
    assert checks["base_backup"]["status"] == "warning" and "no pgBackRest backup of stanza main" in \
        checks["base_backup"]["detail"]
    assert checks["archive_command"]["status"] == "ok" and checks["pgbackrest_check"]["status"] == "ok", checks
    label = p.full_backup()
    p.psql("INSERT INTO events (note) VALUES ('after the backup')")
    wal = p.switch_wal()

    code, checks, _ = check(p)
    assert code == 1  # warnings only: no logical backup (the product's own), archive_timeout unset
    assert {n for n, c in checks.items() if c["status"] not in ("ok", "info")} <= {
        "logical_backup", "archive_timeout", "repository_marker:local"}, checks
    assert checks["base_backup"]["detail"].startswith(f"newest {label} (full, in pgBackRest)")
    assert "in pgBackRest's archive" in checks["archived_wal"]["detail"]

    code, rep = status(p, tmp_path)
    assert code == 1, rep["error"]  # never drilled, no verified restore: not proven
    assert rep["repositories"]["pgbackrest"]["ok"] is True
    assert rep["backups"]["base"]["readable"]["backup_id"] == label
    assert rep["backups"]["base"]["readable"]["locations"] == ["pgbackrest"]
    newest = rep["rpo"]["newest_wal"]
    assert newest["where"] == "pgbackrest" and newest["name"] >= wal
    assert rep["rpo"]["verdict"] in ("ok", "warning") and rep["rpo"]["exposure_s"] < 60, rep["rpo"]
    assert rep["cluster_dir"] == p.sysid

    p.break_archiving()
    p.psql("INSERT INTO events (note) VALUES ('never archived')")
    p.psql("select pg_switch_wal()")
    code, checks, text = check(p)
    assert code == 2
    assert checks["pg_stat_archiver"]["status"] == "failed" and "archiving is failing" in \
        checks["pg_stat_archiver"]["detail"]
    assert checks["pgbackrest_check"]["status"] == "failed"
    assert "archive_command" in checks["pgbackrest_check"]["hint"]
    code, rep = status(p, tmp_path)
    assert code == 2 and rep["verdict"] == "red"
    assert any("pg_stat_archiver: archiving is failing" in r for r in rep["rpo"]["reasons"]), rep["rpo"]
