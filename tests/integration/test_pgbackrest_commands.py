"""`runbook check` and `runbook status` with engine: pgbackrest, against real pgBackRest 2.45 and a real
PostgreSQL 15 primary archiving through `pgbackrest archive-push`: the same checks, verdicts and exit codes as
with the product's own engine; with archiving broken, both are red and say why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import run_cli
from tests.support.pgbackrest import (  # noqa: F401 - fixtures
    PgbrPrimary,
    make_pgbr_primary,
    next_pgbr_dir,
    pgbr_primary_fixture,
)
from tests.support.pitr_cluster import pitr_template_fixture  # noqa: F401 - fixtures
from tests.support.s3server import TlsEndpoint, s3_bucket, s3_server, s3_tls_server  # noqa: F401 - fixtures

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


def test_basebackup_runs_pgbackrest_backup_by_type_and_backups_lists_them(pgbr_primary: PgbrPrimary) -> None:
    p = pgbr_primary
    r = run_cli("basebackup", "-c", str(p.config), "--type", "full", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    full = json.loads(p.pgbackrest("info", "--output=json").stdout)[0]["backup"][-1]
    assert full["type"] == "full"
    assert f"base {full['label']}: ok, full," in r.stdout and "readable in pgbackrest" in r.stdout
    status_file = json.loads((p.dest / "state" / "basebackup-status.json").read_text())
    assert (status_file["engine"], status_file["status"], status_file["backup_id"]) == ("pgbackrest", "ok",
                                                                                        full["label"])
    assert status_file["duration_s"] > 0
    p.psql("INSERT INTO events (note) SELECT 'row-' || g FROM generate_series(1, 200) g")
    r = run_cli("basebackup", "-c", str(p.config), "--type", "incr", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    incr = json.loads(p.pgbackrest("info", "--output=json").stdout)[0]["backup"][-1]
    assert incr["type"] == "incr" and incr["reference"] == [full["label"]]
    assert f"base {incr['label']}: ok, incr, on {full['label']}" in r.stdout

    r = run_cli("backups", "-c", str(p.config), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.strip().startswith(("20",)) and "readable" in ln]
    assert [row[0] for row in rows] == [incr["label"], full["label"]]  # newest first
    assert all(row[row.index("readable") + 1] == "pgbackrest" for row in rows)
    assert f"  {incr['label']}: incr, needs {full['label']}" in lines
    assert any(ln.startswith(f"WAL of {p.sysid} in pgbackrest (stanza main): ") for ln in lines), r.stdout
    doc = json.loads(run_cli("backups", "-c", str(p.config), "--json", timeout=120).stdout)
    assert [b["backup_id"] for b in doc["base_backups"]] == [incr["label"], full["label"]]
    assert doc["base_backups"][0]["type"] == "incr" and doc["base_backups"][0]["locations"] == ["pgbackrest"]
    assert doc["pgbackrest"]["archive"]["max_wal"] is not None

    bad = run_cli("basebackup", "-c", str(p.config), "--type", "diff", "--compress", "none", timeout=60)
    assert bad.returncode == 3 and "compress-type" in bad.stderr  # pg_basebackup's option: said, nothing run
    # pgBackRest failing (the cluster is down): exit 2, its own ERROR line and a hint, the status file says so
    p.stop()
    bad = run_cli("basebackup", "-c", str(p.config), "--type", "diff", timeout=180)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "basebackup failed (nothing new published): pgbackrest backup failed: ERROR [056]" in bad.stderr
    assert "hint: pgBackRest could not reach the cluster" in bad.stderr
    assert json.loads((p.dest / "state" / "basebackup-status.json").read_text())["status"] == "failed"


def test_own_engine_refuses_diff_and_incr(tmp_path: Path) -> None:
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\n")
    cfg.chmod(0o600)
    r = run_cli("basebackup", "-c", str(cfg), "--type", "incr", timeout=60)
    assert r.returncode == 3 and "--type incr needs engine: pgbackrest" in r.stderr


def test_garbled_info_json_makes_status_and_backups_say_so_without_a_traceback(pg_base: Path) -> None:
    """A fake pgbackrest printing JSON that is not pgBackRest's info: status could not run (3), backups names the
    field, neither shows a traceback nor the secret option. (In pg_base: the server's user runs it, as root.)"""

    tmp_path = next_pgbr_dir(pg_base)
    out = tmp_path / "info.json"
    exe = tmp_path / "pgbackrest"
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = help ] && exit 0\ncat {out}\n")
    exe.chmod(0o755)
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'own'}}}\nengine: pgbackrest\npgbackrest:\n  stanza: main\n"
                   f"  executable: {exe}\n  options: {{repo1-cipher-pass: very-secret-passphrase}}\n")
    cfg.chmod(0o600)
    (tmp_path / "own").mkdir()
    for printed, expect in [
        ("{not json", "did not print JSON"),
        (json.dumps([{"name": "main", "status": {"code": 0, "message": "ok"}, "db": [], "archive": [],
                      "backup": [{"database": {"id": 1}, "label": "../../../etc/passwd"}]}]),
         "backup[0].label: '../../../etc/passwd' is not"),
    ]:
        out.write_text(printed)
        r = run_cli("status", "-c", str(cfg), "--no-cluster", "--state-dir", str(tmp_path / "state"), "--json",
                    timeout=60)
        assert r.returncode == 3, r.stdout + r.stderr
        rep = json.loads(r.stdout)
        assert rep["verdict"] == "could not run" and expect in rep["error"], rep["error"]
        r = run_cli("backups", "-c", str(cfg), timeout=60)
        assert r.returncode == 1 and expect in r.stderr, r.stdout + r.stderr
        for text in (r.stdout + r.stderr, json.dumps(rep)):
            assert "Traceback" not in text and "very-secret-passphrase" not in text


def _write_verified_restore(p: PgbrPrimary, label: str, restore_s: float) -> None:
    """What `verify-backup --kind base` records about a pgBackRest backup it restored (its shape: the product's
    VerificationRecord, signed, under the product's own prefix), written here as that command would."""
    import socket
    from datetime import UTC, datetime

    from steps.engines.pgbackrest.engine import PgBackRestEngine
    from steps.engines.pgbackrest.records import fingerprint, write_record
    from steps.repository.config import load_repository_config
    from steps.repository.manifest import Check, Tool, VerificationRecord
    from steps.repository.signing import load_private_key
    from steps.repository.store import LocalStore
    from tests.support.signing import make_keys

    cfg = load_repository_config(p.config)[0]
    backup = next(b for b in PgBackRestEngine(cfg).backups() if b.label == label)
    record = VerificationRecord(
        backup_id=label, level="restored", passed=True, checked_at=datetime.now(UTC), repository="local",
        manifest_sha256=fingerprint(p.stanza, backup), checks=[Check(name="restore", status="ok")],
        tool=Tool(version="test"), host=socket.gethostname(), kind="base", duration_s=restore_s + 1,
        timings={"restore_s": restore_s}, restored_size_bytes=backup.size_bytes)
    write_record(LocalStore(p.own_repo), load_private_key(make_keys()[0]), p.sysid, p.stanza, record)


def test_s3_over_tls_basebackup_status_with_a_verified_restore_and_the_fleet(
        pg_base: Path, pitr_template: Path, s3_tls_server: TlsEndpoint, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    p = make_pgbr_primary(pitr_template, next_pgbr_dir(pg_base), s3=(s3_tls_server, s3_bucket))
    try:
        r = run_cli("basebackup", "-c", str(p.config), "--type", "full", "--quiet", timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        label = json.loads(p.pgbackrest("info", "--output=json").stdout)[0]["backup"][-1]["label"]
        p.psql("INSERT INTO events (note) VALUES ('after the backup')")
        p.switch_wal()
        code, rep = status(p, tmp_path)
        assert code == 1 and rep["backups"]["base"]["restored"] is None, rep["rto"]
        assert any("no verified test restore of a base backup" in x for x in rep["rto"]["reasons"])

        _write_verified_restore(p, label, restore_s=42.0)
        code, rep = status(p, tmp_path)
        assert rep["backups"]["base"]["restored"]["backup_id"] == label, rep["backups"]
        proj = rep["projected_rto"]["default"]
        assert proj["basis"].startswith(f"verify-backup of base backup {label} on "), proj
        assert proj["restore_s"] >= 42.0 * 0.5 and proj["total_s"] is not None
        assert not any("no verified test restore" in x for x in rep["rto"]["reasons"])
        records = p.own_repo / "clusters" / p.sysid / "pgbackrest" / p.stanza / label / "verifications"
        genuine = next(records.glob("*.json"))
        # a record planted beside it, unsigned, claiming a much faster restore: refused, named, not counted
        forged = records / "20991231T000000.000000Z.json"
        forged.write_text(genuine.read_text().replace('"restore_s": 42.0', '"restore_s": 1.0'))
        code, rep = status(p, tmp_path)
        assert rep["projected_rto"]["default"]["restore_s"] >= 42.0 * 0.5
        assert any("records about pgBackRest backups not genuine" in x and forged.name in x
                   for x in rep["integrity"]["reasons"]), rep["integrity"]
        forged.unlink()

        fleet_dir = tmp_path / "fleet"
        fleet_dir.mkdir()
        (fleet_dir / "billing.yaml").write_bytes(p.config.read_bytes())
        (fleet_dir / "billing.yaml").chmod(0o600)
        rb = tmp_path / "runbook.yaml"
        r = run_cli("status", str(rb), "--all", "-c", str(fleet_dir), "--state-dir", str(tmp_path / "state"),
                    "--json", timeout=180)
        assert r.returncode in (1, 2), r.stdout + r.stderr
        lines = json.loads(r.stdout)["clusters"]
        assert [ln["name"] for ln in lines] == ["billing"], lines  # the records' directory is the same cluster
        assert lines[0]["cluster_dir"] == p.sysid and lines[0]["newest_verified_restore"]["backup_id"] == label, lines[0]
        assert lines[0]["rpo_exposure_s"] is not None
    finally:
        p.stop()
