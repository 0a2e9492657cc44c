"""Base backups and point-in-time recovery against real PostgreSQL 15 clusters (1 MB WAL segments).

The primary archives its WAL into the repository; `runbook basebackup` runs as a non-superuser with
REPLICATION; the `pitr` action runs as the engine runs it (`python -m steps pitr`, JSON on stdin) and
restores into a new data directory, where the rows are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.pgcluster import as_server_user
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    basebackup,
    make_primary,
    next_dir,
    notes,
    outputs,
    pitr,
    pitr_template_fixture,
    primary_fixture,
    restored_psql,
    server_runbook_fixture,
    write_rows,
)
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401


def test_basebackup_as_non_superuser_then_pitr_to_a_time(primary: Primary, tmp_path: Path) -> None:
    assert primary.psql("select rolsuper from pg_roles where rolname = 'backup_user'") == "f"
    before_backup = write_rows(primary, 3, "pre")
    m = basebackup(primary)
    assert m["kind"] == "base" and m["timeline"] == 1 and m["wal_segment_size"] == 1024 * 1024
    assert m["cluster"]["system_identifier"] == primary.sysid  # type: ignore[index]
    names = {o["path"] for o in m["objects"]}  # type: ignore[attr-defined]
    assert names == {"base.tar.zst", "backup_manifest"}
    kept = write_rows(primary, 5, "kept", pause=0.05)
    target = primary.psql("select now()")
    lost = write_rows(primary, 5, "lost")
    primary.switch_wal()
    primary.crash()

    pgdata = primary.cluster.datadir.parent / "restored"
    r = pitr(primary.pitr_args(pgdata, target=target, target_kind="time"))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = notes(pgdata)
    assert rows == before_backup + kept and not set(lost) & set(rows)
    out = outputs(r)
    assert out["timeline"] == 2 and restored_psql(pgdata, "select pg_is_in_recovery()") == "f"
    point = datetime.fromisoformat(str(out["recovery_point"]))
    last_kept = datetime.fromisoformat(restored_psql(pgdata, "select max(at) from events").replace(" ", "T"))
    assert last_kept <= point <= datetime.fromisoformat(target.replace(" ", "T"))
    assert out["data_directory"] == str(pgdata) and float(str(out["replay_s"])) >= 0 and out["lsn"]
    assert oct(pgdata.stat().st_mode & 0o777) == "0o700"
    auto = (pgdata / "postgresql.auto.conf").read_text()
    assert "restore_command" not in auto and "recovery_target" not in auto and "archive_mode = 'off'" in auto
    assert not (pgdata / "recovery.signal").exists()

    # the catalogue shows the base backup
    cat = run_cli("backups", "-c", str(primary.config), "--json")
    assert cat.returncode == 0, cat.stderr
    base = json.loads(cat.stdout)["base_backups"]
    assert [b["backup_id"] for b in base] == [m["backup_id"]] and base[0]["level"] == "readable"


def test_pitr_to_a_named_restore_point_and_refusals(primary: Primary) -> None:
    basebackup(primary)
    kept = write_rows(primary, 4, "kept")
    primary.psql("select pg_create_restore_point('before-the-mistake')")
    lost = write_rows(primary, 4, "lost")
    primary.switch_wal()
    ended = datetime.now(UTC)
    primary.crash()
    base = primary.cluster.datadir.parent

    # a time without a zone is refused before anything is touched (bad arguments: exit 2)
    r = pitr(primary.pitr_args(base / "r0", target="2026-11-25 10:00:00", target_kind="time"))
    assert r.returncode == 2 and "no time zone" in r.stderr
    # a target before the only base backup ended
    early = (ended - timedelta(hours=1)).isoformat()
    r = pitr(primary.pitr_args(base / "r1", target=early, target_kind="time"))
    assert r.returncode == 1 and "target before the backup ends" in r.stderr, r.stderr
    assert not (base / "r1").exists()
    # a target beyond the archived WAL: recovery ends before reaching it
    late = (ended + timedelta(hours=1)).isoformat()
    r = pitr(primary.pitr_args(base / "r2", target=late, target_kind="time"))
    assert r.returncode == 1 and "target beyond the archived WAL" in r.stderr, r.stdout + r.stderr
    # a non-empty data directory is refused
    (base / "r3").mkdir()
    (base / "r3" / "PG_VERSION").write_text("15\n")
    r = pitr(primary.pitr_args(base / "r3", target_kind="latest"))
    assert r.returncode == 1 and "is not empty" in r.stderr

    pgdata = base / "r4"
    r = pitr(primary.pitr_args(pgdata, target="before-the-mistake", target_kind="name"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert notes(pgdata) == kept and outputs(r)["timeline"] == 2
    assert not set(lost) & set(notes(pgdata))


def test_pitr_to_latest_replays_everything_archived(primary: Primary) -> None:
    basebackup(primary)
    rows = write_rows(primary, 20, "row")
    primary.switch_wal()
    primary.crash()
    pgdata = primary.cluster.datadir.parent / "latest"
    r = pitr(primary.pitr_args(pgdata, target_kind="latest"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert notes(pgdata) == rows
    assert outputs(r)["timeline"] == 2


def test_base_backup_round_trip_through_s3(pg_base: Path, pitr_template: Path, s3_server: S3Endpoint,  # noqa: F811
                                           s3_bucket: str, server_runbook: str) -> None:  # noqa: F811
    """S3 only: WAL archived by wal-push, the base backup published and checked there, PITR fetched from there."""
    dest = next_dir(pg_base)
    s3 = {"bucket": s3_bucket, "prefix": "assetflow", "endpoint_url": s3_server.url, "region": "us-east-1"}
    p = make_primary(pitr_template, dest, s3=s3, local=False, venv_runbook=server_runbook)
    try:
        write_rows(p, 3, "pre")
        r = run_cli("basebackup", "-c", str(p.config), timeout=120)
        assert r.returncode == 0 and "readable in s3" in r.stdout, r.stdout + r.stderr
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
        base = [k for k in keys if "/base/" in k]
        assert {k.rsplit("/", 1)[1] for k in base} >= {"manifest.json", "backup_manifest", "base.tar.zst"}
        kept = write_rows(p, 4, "kept")
        target = p.psql("select now()")
        write_rows(p, 4, "lost")
        p.switch_wal()
        p.crash()
        pgdata = dest / "restored"
        r = pitr(p.pitr_args(pgdata, target=target, source="s3"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "from s3" in r.stdout + r.stderr or "s3" in r.stdout
        assert notes(pgdata) == [f"pre-{i}" for i in range(3)] + kept
        assert outputs(r)["timeline"] == 2
    finally:
        p.stop_restored()
        p.crash()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("pg_createcluster"),
                    reason="a Debian cluster needs root and postgresql-common")
def test_pitr_into_a_new_debian_cluster(primary: Primary) -> None:
    """pg_createcluster-style: configuration under /etc/postgresql/15/NAME, started with pg_ctlcluster."""
    basebackup(primary)
    rows = write_rows(primary, 6, "row")
    primary.switch_wal()
    primary.crash()
    name = f"rbtest{os.getpid()}"
    pgdata = Path("/var/lib/postgresql/15") / name
    port = _free_port()
    try:
        r = pitr(primary.pitr_args(pgdata, target_kind="latest", debian_cluster=name, port=port,
                                   socket_dir="/var/run/postgresql"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert (Path("/etc/postgresql/15") / name / "postgresql.conf").exists()
        out = subprocess.run(as_server_user(["/usr/lib/postgresql/15/bin/psql", "-h", "/var/run/postgresql", "-p",
                                             str(port), "-XAtc", "select string_agg(note, ',' order by id) from events"]),
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out.split(",") == rows and outputs(r)["timeline"] == 2
        assert outputs(r)["log_file"] == f"/var/log/postgresql/postgresql-15-{name}.log"
        # the same cluster name again is refused: an existing cluster is never overwritten
        r = pitr(primary.pitr_args(Path("/var/lib/postgresql/15") / f"{name}b", target_kind="latest",
                                   debian_cluster=name, port=port))
        assert r.returncode == 1 and "exists already" in r.stderr
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True)


def test_pitr_chooses_the_older_base_backup_for_a_target_between_two_and_reaches_xid_and_lsn_targets(
        primary: Primary) -> None:
    first_backup = basebackup(primary)
    first = write_rows(primary, 3, "first", pause=0.05)
    between = primary.psql("select now()")
    time.sleep(1.1)  # backup ids are per second
    second_backup = basebackup(primary)
    assert second_backup["backup_id"] != first_backup["backup_id"]
    second = write_rows(primary, 2, "second")
    xid = primary.psql("insert into events (note) values ('at-xid') returning xmin::text")
    after_xid = write_rows(primary, 2, "after-xid")
    lsn = primary.psql("select pg_current_wal_lsn()")
    after_lsn = write_rows(primary, 2, "after-lsn")
    primary.switch_wal()
    ended = datetime.now(UTC)
    primary.crash()
    base = primary.cluster.datadir.parent

    # a target between the two base backups: the older one, the only one that ended before it
    r = pitr(primary.pitr_args(base / "between", target=between, target_kind="time"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert outputs(r)["backup_id"] == first_backup["backup_id"]
    assert notes(base / "between")[-3:] == first and not set(second) & set(notes(base / "between"))
    primary.stop_restored()  # each restored server listens on the same socket

    # a target before every base backup: refused, nothing made
    early = (datetime.fromisoformat(str(first_backup["started_at"])) - timedelta(minutes=5)).isoformat()
    r = pitr(primary.pitr_args(base / "early", target=early, target_kind="time"))
    assert r.returncode == 1 and "target before the backup ends" in r.stderr, r.stdout + r.stderr
    assert not (base / "early").exists()

    # a transaction id: that transaction included, the later ones not
    r = pitr(primary.pitr_args(base / "xid", target=xid, target_kind="xid"))
    assert r.returncode == 0, r.stdout + r.stderr
    got = notes(base / "xid")
    assert got[-1] == "at-xid" and not set(after_xid) & set(got) and set(second) <= set(got)
    primary.stop_restored()

    # an LSN: everything committed before it, nothing after
    r = pitr(primary.pitr_args(base / "lsn", target=lsn, target_kind="lsn"))
    assert r.returncode == 0, r.stdout + r.stderr
    got = notes(base / "lsn")
    assert got[-2:] == after_xid and not set(after_lsn) & set(got)
    assert datetime.fromisoformat(str(outputs(r)["recovery_point"])) <= ended
