"""A repository is hostile input, the repository side (issue 14, item 6), on real PostgreSQL 15 clusters and
S3 over HTTP: the repository marker (wal-fetch never answers "missing" from an empty mount point, a missing
root or a wrong prefix), acknowledged WAL that a store ignoring conditional writes cannot replace, stale
staging after a `kill -9`, the database name of restore-logical, the recovery lock keyed on the server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import LockHeld
from steps.repository.config import RepositoryConfig
from steps.repository.layout import wal_key
from steps.repository.recovery_lock import acquire, lock_keys, normalised_address
from steps.repository.store import MARKER
from steps.wal.segment import read_header
from tests.conftest import ROOT, run_cli
from tests.support.backup_helpers import backup, cli_env, make_cluster, run_action
from tests.support.backup_helpers import write_config as write_backup_config
from tests.support.pgcluster import PG_BIN, as_server_user, chown_server_user, clone_cluster
from tests.support.s3server import FaultProxy, S3Endpoint, credentials_env, s3_bucket, s3_server  # noqa: F401
from tests.support.wal_helpers import (
    WalCluster,
    credentials_file,
    s3_section,
    server_dir,
    wal_cluster,  # noqa: F401
    wal_template,  # noqa: F401
    write_config,
)

Factory = Callable[..., WalCluster]
NEVER = "0000000100000000000000FF"  # a segment nobody archived


def _check(cfg: Path) -> tuple[int, dict[str, Any]]:
    r = run_cli("check", "-c", str(cfg), "--json", env=credentials_env(), timeout=120)
    assert r.stdout.strip(), r.stderr
    return r.returncode, {c["name"]: c for c in json.loads(r.stdout)["checks"]}


def test_wal_fetch_says_missing_only_where_the_marker_proves_the_repository(wal_cluster: Factory) -> None:  # noqa: F811
    wc = wal_cluster()
    repo = server_dir(wc.base, "repo")
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo)
    wc.archive_with(cfg)
    wc.cluster.start()
    name = wc.switch()
    wc.wait_archived(name)
    marker = json.loads((repo / MARKER).read_text())
    assert marker["format"] == "runbook repository" and marker["version"] == 1
    fetched = server_dir(wc.base, "fetched")
    r = wc.runbook("wal-fetch", "-c", str(cfg), NEVER, str(fetched / "x"))
    assert (r.returncode, r.stderr) == (1, ""), r

    # An empty mount point (the file system not mounted) and a root that is not there at all: never "missing".
    empty = server_dir(wc.base, "mnt")
    for where in (empty, wc.base / "nowhere"):
        other = write_config(wc.base / f"{where.name}.yaml", wc.cluster, local=where)
        for wanted in (name, NEVER):
            r = wc.runbook("wal-fetch", "-c", str(other), wanted, str(fetched / "y"))
            assert r.returncode >= 126, r
            assert "not the repository" in r.stderr and f"no {MARKER} marker" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr
        assert not (fetched / "y").exists()
    assert os.listdir(empty) == []  # wal-fetch wrote nothing there
    assert not (wc.base / "nowhere").exists()

    # A repository archived into before markers existed: its cluster's wal/ holds archived WAL, which proves it;
    # wal-fetch believes it and creates nothing; check reports the missing marker; the next push writes it.
    (repo / MARKER).unlink()
    r = wc.runbook("wal-fetch", "-c", str(cfg), NEVER, str(fetched / "x"))
    assert (r.returncode, r.stderr) == (1, ""), r
    assert not (repo / MARKER).exists()
    code, checks = _check(cfg)
    assert code >= 1 and checks["repository_marker:local"]["status"] == "warning", checks
    assert MARKER in checks["repository_marker:local"]["detail"]
    later = wc.switch()
    wc.wait_archived(later)
    assert (repo / MARKER).exists()
    code, checks = _check(cfg)
    assert "repository_marker:local" not in checks, checks


def test_wal_fetch_from_a_wrong_s3_prefix_stops_recovery(wal_cluster: Factory, s3_server: S3Endpoint,  # noqa: F811
                                                         s3_bucket: str) -> None:  # noqa: F811
    wc = wal_cluster()
    creds = credentials_file(wc.base)
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, s3=s3_section(s3_server.url, s3_bucket, creds))
    wc.archive_with(cfg)
    wc.cluster.start()
    name = wc.switch()
    wc.wait_archived(name)
    assert s3_server.client().head_object(Bucket=s3_bucket, Key=f"wal-tests/{MARKER}")
    fetched = server_dir(wc.base, "fetched")
    r = wc.runbook("wal-fetch", "-c", str(cfg), NEVER, str(fetched / "x"))
    assert (r.returncode, r.stderr) == (1, ""), r
    typo = write_config(wc.base / "typo.yaml", wc.cluster,
                        s3=s3_section(s3_server.url, s3_bucket, creds, prefix="wal-test"))
    r = wc.runbook("wal-fetch", "-c", str(typo), NEVER, str(fetched / "x"))
    assert r.returncode >= 126 and "not the repository" in r.stderr, r


def test_restore_logical_takes_db_as_a_name_never_as_a_connection_string(pg_base: Path, pg_template: Path,
                                                                          tmp_path: Path) -> None:
    c = make_cluster(pg_base, pg_template, "dbname-victim")
    try:
        c.psql("create database app")
        c.psql("create table from_backup as select g from generate_series(1, 50) g", "app")
        c.psql("create database victim")
        c.psql("create table precious as select 1 as x", "victim")
        cfg = write_backup_config(tmp_path / "repo.yaml", c, dbs=["app"], local=tmp_path / "repo")
        assert backup(cfg).returncode == 0
        fetched = run_action("fetch-latest-backup", {"config": str(cfg), "db": "app", "dest": str(tmp_path / "r"),
                                                     "from": "local"})
        assert fetched.code == 0, fetched.stdout
        env = {"PGHOST": str(c.socket_dir), "PGPORT": str(c.port), "PGUSER": "postgres"}
        restored = run_action("restore-logical", {"backup_dir": fetched.outputs["backup_dir"], "db": "dbname=victim"},
                              env=env)
        assert restored.code == 0, restored.stdout + restored.stderr
        # victim is untouched; a database of that very name holds the backup.
        assert c.psql("select string_agg(tablename, ',') from pg_tables where schemaname = 'public'",
                      "victim") == "precious"
        assert c.psql("select datname from pg_database where datname like 'dbname=%'") == "dbname=victim"
        count = subprocess.run([str(PG_BIN / "psql"), "-h", str(c.socket_dir), "-p", str(c.port), "-U", "postgres",
                                "-XAtq", "-d", "dbname='dbname=victim'", "-c", "select count(*) from from_backup"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert count == "50"
    finally:
        c.stop()


def _start_blocked_backup(cfg: Path, db: str, staging: Path) -> tuple[subprocess.Popen[str], Path]:
    """`runbook backup --db DB` in its own session, held up by a lock on DB's table: (process, its staging)."""
    before = set(staging.glob(f"{db}-*")) if staging.is_dir() else set()
    proc = subprocess.Popen([sys.executable, "-m", "runbook", "backup", "-c", str(cfg), "--db", db], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **cli_env()})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        made = [p for p in (staging.glob(f"{db}-*") if staging.is_dir() else []) if p not in before]
        if made and (made[0] / "dump").exists():
            return proc, made[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the backup made no staging directory")


def test_stale_staging_of_a_killed_backup_is_reported_and_removed_by_the_next_one(
        pg_base: Path, pg_template: Path, tmp_path: Path) -> None:
    import psycopg

    c = make_cluster(pg_base, pg_template, "stale-staging")
    blockers: list[Any] = []
    try:
        for db in ("app", "other"):
            c.psql(f"create database {db}")
            c.psql("create table t as select g, md5(g::text) as h from generate_series(1, 20000) g", db)

        def block(db: str) -> None:  # pg_dump waits for its ACCESS SHARE lock on t meanwhile
            b = psycopg.connect(host=str(c.socket_dir), port=c.port, user="postgres", dbname=db)
            b.execute("lock table t in access exclusive mode")
            blockers.append(b)

        repo = tmp_path / "repo"
        staging = repo / ".staging"
        cfg = write_backup_config(tmp_path / "repo.yaml", c, dbs=["app", "other"], local=repo)
        block("app")
        killed, left = _start_blocked_backup(cfg, "app", staging)
        os.killpg(killed.pid, signal.SIGKILL)  # the backup and its pg_dump, as a crash would
        killed.wait(10)
        blockers.pop().close()
        assert left.is_dir() and (left / "dump").is_dir()

        code, checks = _check(cfg)
        assert checks["staging"]["status"] == "warning" and str(left) in checks["staging"]["detail"], checks

        # A backup running now owns its staging: the next backup (of another database) leaves it alone.
        block("app")
        running, live = _start_blocked_backup(cfg, "app", staging)
        done = backup(cfg, "--db", "other")
        assert done.returncode == 0, done.stderr
        assert not left.exists(), "the stale staging was not removed"
        assert live.is_dir(), "a live backup's staging was removed"
        assert "removed stale staging" in (tmp_path / "state" / "backup.log").read_text()
        blockers.pop().close()
        out, err = running.communicate(timeout=120)
        assert running.returncode == 0, err
        assert not staging.exists() or list(staging.iterdir()) == []
        code, checks = _check(cfg)
        assert "staging" not in checks
    finally:
        for b in blockers:
            b.close()
        c.stop()


def test_two_pushers_of_one_name_on_a_store_that_ignores_conditional_writes(
        wal_cluster: Factory, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    """The race made to happen, through real HTTP: pusher B (other bytes) looks first and finds nothing; its
    write is held while pusher A pushes the real segment and is confirmed; then B's write lands, and the store,
    ignoring If-None-Match, keeps B's bytes. B must not be confirmed, wal-fetch must not hand B's bytes to
    PostgreSQL, and check must say so."""
    wc = wal_cluster()
    reached, release = threading.Event(), threading.Event()
    held: list[str] = []

    def hold(method: str, path: str) -> threading.Event | None:
        if method == "PUT" and path.split("?")[0].endswith(".zst") and not held:
            held.append(path)
            reached.set()
            return release
        return None

    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: False, drop_headers=("If-None-Match",),
                    hold=hold) as proxy:
        cfg = write_config(wc.base / "repository.yaml", wc.cluster,
                           s3=s3_section(proxy.url, s3_bucket, credentials_file(wc.base)))
        wc.cluster.start()
        name = wc.switch()
        other = server_dir(wc.base, "elsewhere/pg_wal") / name
        data = bytearray((wc.datadir / "pg_wal" / name).read_bytes())
        data[7000:7008] = os.urandom(8)
        other.write_bytes(bytes(data))
        chown_server_user(other)
        late = subprocess.Popen(as_server_user([str(wc.venv.runbook), "wal-push", "-c", str(cfg), str(other)]),
                                cwd=wc.datadir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert reached.wait(60), "pusher B never wrote"
            first = wc.runbook("wal-push", "-c", str(cfg), f"pg_wal/{name}")
            assert first.returncode == 0, first.stderr
        finally:
            release.set()
        _, err = late.communicate(timeout=60)
        assert 0 < late.returncode < 126, err
        assert "two different segments of one name" in err and "Traceback" not in err

        key = f"wal-tests/{wal_key(wc.sysid(), name)}"
        stored = s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert read_header(stored)[0]["sha256"] == hashlib.sha256(bytes(data)).hexdigest()  # the store kept B's

        dest = server_dir(wc.base, "fetched") / name
        r = wc.runbook("wal-fetch", "-c", str(cfg), name, str(dest))
        assert r.returncode >= 126 and "two different segments of one name" in r.stderr, r
        assert not dest.exists()
        again = wc.runbook("wal-push", "-c", str(cfg), str(other))  # B's retries are refused as well
        assert 0 < again.returncode < 126 and "two different segments of one name" in again.stderr, again

        code, checks = _check(cfg)
        assert code == 2 and checks["wal_conflicts:s3"]["status"] == "failed", checks
        assert name in checks["wal_conflicts:s3"]["detail"]


def test_two_spellings_of_one_server_are_one_recovery_lock(pg_base: Path, pg_template: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dest = pg_base / "lock-spellings"
    dest.mkdir()
    c = clone_cluster(pg_template, dest)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        c.port = int(s.getsockname()[1])
    opts = (f"-c listen_addresses='127.0.0.1' -c unix_socket_directories='{c.socket_dir}' -c port={c.port} "
            "-c fsync=off")
    subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(c.datadir), "-l", str(c.datadir / "server.log"),
                                   "-o", opts, "-w", "-t", "60", "start"]), check=True, capture_output=True)
    monkeypatch.setenv("PGUSER", "postgres")
    cfg = RepositoryConfig.model_validate({"version": 1, "local": {"path": str(tmp_path / "repo")}})
    by_socket, by_any, by_loopback = (f"{c.socket_dir}:{c.port}/app", f"0.0.0.0:{c.port}/app",
                                      f"127.0.0.1:{c.port}/app")

    def holder(n: int) -> dict[str, Any]:
        return {"run_id": f"run-{n}", "user": f"op{n}", "host": f"h{n}", "pid": n, "since": "t"}

    try:
        # 0.0.0.0 is this host too, but no rule says so: only the server's identity does.
        assert normalised_address(by_socket) != normalised_address(by_any)
        assert lock_keys(by_socket)[1] == lock_keys(by_any)[1]
        first = acquire(cfg, by_socket, holder(1))
        for other in (by_any, by_loopback):
            with pytest.raises(LockHeld, match="run run-1 by op1@h1"):
                acquire(cfg, other, holder(2))
        first.release()
        second = acquire(cfg, by_any, holder(2))
        second.release()
        assert list((tmp_path / "repo" / "locks").iterdir()) == []

        # The server down (the disaster): the normalised address still makes the socket and 127.0.0.1 one lock.
        c.stop()
        first = acquire(cfg, by_socket, holder(1))
        with pytest.raises(LockHeld, match="run run-1 by op1@h1"):
            acquire(cfg, by_loopback, holder(2))
        first.release()
    finally:
        c.stop()
