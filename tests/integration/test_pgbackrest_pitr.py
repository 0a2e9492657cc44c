"""The `pitr` action and `verify-backup --kind base` with `engine: pgbackrest`, against real pgBackRest 2.45 and
a real PostgreSQL 15 primary (1 MB WAL segments) archiving with `pgbackrest archive-push`.

PITR to a time between two backups restores the older one (the product's rule: the newest that ended before the
target) and stops at the target; `immediate` stops at the newest backup's end; a target past the archive is
refused before anything is made when the archive's range proves it (an LSN), else caught as the server's FATAL
and explained (a time); the production data directory is refused. verify-backup of a good backup writes a signed
record under the product's own prefix (never inside pgBackRest's repository); one byte flipped in a repository
file fails it, naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.pgbackrest import PgbrPrimary, make_pgbr_primary, next_pgbr_dir
from tests.support.pgcluster import PG_BIN, as_server_user, chown_server_user
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    notes,
    outputs,
    pitr,
    pitr_template_fixture,
    restored_psql,
    stop_servers,
)
from tests.support.s3server import TlsEndpoint, s3_bucket, s3_server, s3_tls_server  # noqa: F401 - fixtures


@pytest.fixture(name="primary")
def primary_fixture(pg_base: Path, pitr_template: Path) -> Iterator[PgbrPrimary]:  # noqa: F811
    p = make_pgbr_primary(pitr_template, next_pgbr_dir(pg_base))
    restored: list[Path] = []
    p.restored = restored  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        stop_servers(restored)
        p.stop()


def _write(p: PgbrPrimary, n: int, note: str) -> list[str]:
    out = []
    for i in range(n):
        p.psql(f"INSERT INTO events (note) VALUES ('{note}-{i}')")
        out.append(f"{note}-{i}")
    return out


def _target_dir(p: PgbrPrimary, name: str) -> Path:
    """A new data directory in a directory of its own (its socket there: the primary keeps its own)."""
    d = p.dest / name
    d.mkdir(mode=0o755)
    chown_server_user(d)  # the restored server's socket goes there
    return d / "data"


def _args(p: PgbrPrimary, pgdata: Path, **kw: object) -> dict[str, object]:
    p.restored.append(pgdata)  # type: ignore[attr-defined]
    return {"config": str(p.config), "pgdata": str(pgdata), "socket_dir": str(pgdata.parent), "port": 5432, **kw}


def _labels(p: PgbrPrimary) -> list[str]:
    return [b["label"] for b in json.loads(p.pgbackrest("info", "--output=json").stdout)[0]["backup"]]


def test_pitr_to_a_time_between_two_backups_restores_the_older_one(primary: PgbrPrimary) -> None:
    p = primary
    first = _write(p, 3, "before-first")
    p.pgbackrest("backup", "--type=full")
    kept = _write(p, 3, "kept")
    time.sleep(1.1)  # pgBackRest's times are whole seconds: the target is after the first backup's stop
    target = p.psql("select clock_timestamp()")
    time.sleep(0.2)
    lost = _write(p, 3, "lost")
    p.switch_wal()
    time.sleep(1.1)
    p.pgbackrest("backup", "--type=full")
    _write(p, 2, "after-second")
    p.switch_wal()
    older, newer = _labels(p)

    pgdata = _target_dir(p, "r-between")
    r = pitr(_args(p, pgdata, target_kind="time", target=target))
    assert r.returncode == 0, r.stdout + r.stderr
    out = outputs(r)
    assert out["backup_id"] == older and out["backup_id"] != newer  # the newest that ended before the target
    assert out["cluster"] == p.sysid and out["timeline"] == 2 and out["engine"] == "pgbackrest"
    assert isinstance(out["lsn"], str) and "/" in out["lsn"]  # where redo ended, as PostgreSQL prints it
    assert notes(pgdata) == first + kept and not set(lost) & set(notes(pgdata))
    auto = (pgdata / "postgresql.auto.conf").read_text()
    assert "restore_command" not in auto and "recovery_target" not in auto  # removed after promotion
    assert "archive_mode = 'off'" in auto  # the copy never writes into production's archive
    assert "pgbackrest restore --set=" + older in r.stdout

    # a target before the oldest backup's end: refused, nothing made
    early = _target_dir(p, "r-early")
    r = pitr(_args(p, early, target_kind="time", target="2000-01-01T00:00:00+00:00"))
    assert r.returncode == 1
    assert "target before the backup ends" in r.stdout + r.stderr and older in r.stdout + r.stderr
    assert not early.exists()
    # a time without a zone: refused by the arguments (exit 2)
    r = pitr(_args(p, early, target_kind="time", target="2026-01-01 00:00:00"))
    assert r.returncode == 2 and "no time zone" in r.stdout + r.stderr and not early.exists()


def test_pitr_immediate_stops_at_the_newest_backups_end(primary: PgbrPrimary) -> None:
    p = primary
    before = _write(p, 2, "in-backup")
    p.pgbackrest("backup", "--type=full")
    after = _write(p, 3, "after")
    p.switch_wal()
    (label,) = _labels(p)

    pgdata = _target_dir(p, "r-immediate")
    r = pitr(_args(p, pgdata, target_kind="immediate"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = outputs(r)
    assert out["backup_id"] == label and out["timeline"] == 2
    rows = notes(pgdata)
    assert rows == before and not set(after) & set(rows)


def test_a_target_past_the_archive_is_refused_or_explained(primary: PgbrPrimary) -> None:
    p = primary
    _write(p, 2, "x")
    p.pgbackrest("backup", "--type=full")
    _write(p, 2, "y")
    p.switch_wal()

    # an LSN past the newest archived segment: the archive's range proves it, nothing is made
    far = _target_dir(p, "r-lsn")
    r = pitr(_args(p, far, target_kind="lsn", target="7/0"))
    assert r.returncode == 1
    assert "target beyond the archived WAL" in r.stdout + r.stderr and "nothing was made" in r.stdout + r.stderr
    assert not far.exists()

    # a time after the last archived transaction, in the past: the server's FATAL, explained
    _write(p, 1, "z")
    time.sleep(1)
    late = p.psql("select clock_timestamp()")  # no WAL after this moment reaches the archive
    time.sleep(1)
    pgdata = _target_dir(p, "r-late")
    p.psql("select pg_switch_wal()")  # nothing after `late` committed: the archive ends before it
    r = pitr(_args(p, pgdata, target_kind="time", target=late))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "target beyond the archived WAL" in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_production_data_directory_is_refused_without_delta(primary: PgbrPrimary) -> None:
    p = primary
    p.pgbackrest("backup", "--type=full")
    r = pitr(_args(p, p.cluster.datadir, target_kind="immediate", socket_dir=str(p.dest / "elsewhere")))
    assert r.returncode == 1
    assert "production data directory" in r.stdout + r.stderr and "delta: true" in r.stdout + r.stderr
    assert p.psql("select 1") == "1"  # untouched, still running
    # a non-empty directory that is not production's: refused as with the own engine
    busy = _target_dir(p, "r-busy")
    busy.mkdir()
    (busy / "something").write_text("x")
    r = pitr(_args(p, busy, target_kind="immediate"))
    assert r.returncode == 1 and "is not empty" in r.stdout + r.stderr


def _records(p: PgbrPrimary, label: str) -> list[Path]:
    d = p.own_repo / "clusters" / p.sysid / "pgbackrest" / p.stanza / label / "verifications"
    return sorted(d.glob("*.json")) if d.is_dir() else []


def test_verify_backup_of_a_good_then_a_damaged_pgbackrest_backup(primary: PgbrPrimary) -> None:
    p = primary
    _write(p, 5, "v")
    p.pgbackrest("backup", "--type=full")
    (label,) = _labels(p)
    scratch = p.dest / "scratch"  # root's, 0755: the scratch cluster's user passes through it
    scratch.mkdir(mode=0o755)

    r = run_cli("verify-backup", "-c", str(p.config), "--kind", "base", "--scratch-dir", str(scratch), "--json",
                timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "verified" and out["backup_id"] == label and out["kind"] == "base"
    names = {c["name"]: c for c in out["checks"]}
    assert names["pgbackrest verify"]["status"] == "ok" and names["pgbackrest restore"]["status"] == "ok"
    assert names["replay to consistency"]["status"] == "ok"
    assert out["scratch_removed"] is True and not list(scratch.iterdir())
    (rec,) = _records(p, label)
    assert rec.with_name(rec.name + ".sig").exists()  # signed like the own engine's records
    record = json.loads(rec.read_text())
    assert record["passed"] is True and record["level"] == "restored" and record["kind"] == "base"
    assert any(c["name"] == "pgbackrest verify" for c in record["checks"])
    assert out["record"] == str(rec.relative_to(p.own_repo))
    # nothing of the product's inside pgBackRest's repository
    assert not [f for f in p.repo.rglob("*") if "verifications" in f.parts]  # type: ignore[union-attr]
    assert _level(p, label) == "restored"  # `backups` (and status) read the record

    # one byte flipped in a repository file of the backup: failed, the file named
    files = sorted(f for f in (p.repo / "backup" / p.stanza / label).rglob("*")  # type: ignore[operator]
                   if f.is_file() and f.stat().st_size > 100 and not f.name.startswith("backup.manifest"))
    victim = files[len(files) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    r = run_cli("verify-backup", "-c", str(p.config), "--backup", label, "--scratch-dir", str(scratch), "--json",
                timeout=300)  # a pgBackRest label names its kind
    assert r.returncode == 2, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "failed" and out["backup_id"] == label
    failed = [c for c in out["checks"] if c["status"] == "failed"]
    assert failed and failed[0]["name"] == "pgbackrest verify"
    # the file pgBackRest found damaged, by its name in the backup (bundled files are named inside the bundle)
    assert f"invalid checksum {label}/pg_data/" in failed[0]["detail"], failed[0]["detail"]
    assert "checksum invalid: 1" in failed[0]["detail"]
    records = _records(p, label)
    assert len(records) == 2 and json.loads(records[-1].read_text())["passed"] is False
    assert _level(p, label) == "none"  # demoted until a later verification passes


def _level(p: PgbrPrimary, label: str) -> str:
    r = run_cli("backups", "-c", str(p.config), "--json", timeout=120)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    (b,) = [b for b in json.loads(r.stdout)["base_backups"] if b["backup_id"] == label]
    return str(b["level"])


def test_delta_true_restores_into_the_production_data_directory(primary: PgbrPrimary) -> None:
    p = primary
    kept = _write(p, 3, "kept")
    p.pgbackrest("backup", "--type=full")
    p.switch_wal()
    p.stop()  # the broken server is down, as the runbook's stop-server step leaves it
    (p.cluster.datadir / "base").rename(p.cluster.datadir / "base-damaged")  # the files a --delta repairs
    r = pitr(_args(p, p.cluster.datadir, target_kind="immediate", delta=True, socket_dir=str(p.dest)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(--delta)" in r.stdout and outputs(r)["timeline"] == 2
    assert restored_psql(p.cluster.datadir, "select string_agg(note, ',' order by id) from events") == ",".join(kept)


def test_pitr_and_verify_backup_from_an_s3_repository_over_tls(
        pg_base: Path, pitr_template: Path, s3_tls_server: TlsEndpoint, s3_bucket: str) -> None:  # noqa: F811
    p = make_pgbr_primary(pitr_template, next_pgbr_dir(pg_base), s3=(s3_tls_server, s3_bucket))
    restored: list[Path] = []
    try:
        kept = _write(p, 3, "s3")
        p.pgbackrest("backup", "--type=full")
        (label,) = [b["label"] for b in json.loads(p.pgbackrest("info", "--output=json").stdout)[0]["backup"]]
        more = _write(p, 2, "s3-after")
        p.switch_wal()
        scratch = p.dest / "scratch"
        scratch.mkdir(mode=0o755)
        r = run_cli("verify-backup", "-c", str(p.config), "--kind", "base", "--scratch-dir", str(scratch), "--json",
                    timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["backup_id"] == label
        assert (p.own_repo / "clusters" / p.sysid / "pgbackrest" / p.stanza / label / "verifications").is_dir()

        d = p.dest / "r-s3"
        d.mkdir(mode=0o755)
        chown_server_user(d)
        pgdata = d / "data"
        restored.append(pgdata)
        r = pitr({"config": str(p.config), "pgdata": str(pgdata), "socket_dir": str(d), "port": 5432,
                  "target_kind": "latest"})
        assert r.returncode == 0, r.stdout + r.stderr
        assert outputs(r)["backup_id"] == label and notes(pgdata) == kept + more
    finally:
        stop_servers(restored)
        p.stop()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("pg_createcluster"),
                    reason="pg_createcluster writes under /etc/postgresql: root and postgresql-common only")
def test_pitr_into_a_new_debian_cluster(primary: PgbrPrimary) -> None:
    p = primary
    rows = _write(p, 4, "deb")
    p.pgbackrest("backup", "--type=full")
    p.switch_wal()
    name = f"rbpgbr{os.getpid()}"
    pgdata = Path("/var/lib/postgresql/15") / name
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = int(sk.getsockname()[1])
    try:
        r = pitr({"config": str(p.config), "pgdata": str(pgdata), "debian_cluster": name, "port": port,
                  "socket_dir": "/var/run/postgresql", "target_kind": "latest"})
        assert r.returncode == 0, r.stdout + r.stderr
        assert (Path("/etc/postgresql/15") / name / "postgresql.conf").exists()
        out = subprocess.run(as_server_user([str(PG_BIN / "psql"), "-h", "/var/run/postgresql", "-p", str(port),
                                             "-XAtc", "select string_agg(note, ',' order by id) from events"]),
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out.split(",") == rows and outputs(r)["timeline"] == 2
        assert outputs(r)["log_file"] == f"/var/log/postgresql/postgresql-15-{name}.log"
        r = pitr({"config": str(p.config), "pgdata": str(pgdata) + "b", "debian_cluster": name, "port": port,
                  "target_kind": "latest"})
        assert r.returncode == 1 and "exists already" in r.stdout + r.stderr
    finally:
        subprocess.run(["pg_dropcluster", "--stop", "15", name], capture_output=True)
