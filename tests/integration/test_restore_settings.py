"""restore-logical's session settings, seen in the restoring server (real PostgreSQL 15 clusters, the real action).

By default pg_restore's sessions commit without waiting for the WAL flush (synchronous_commit off) and build
indexes with the action's maintenance_work_mem: seen by pg_restore's own sessions (a CHECK constraint of the
backup's calls a function that logs the settings of the session loading the rows) and in the server's
log (trace_sort: each index build's sort names its workMem). The restore is durable at the end, and a server
that crashed during it, or a lost durability connection, makes it a failed restore, never a silent one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backup_helpers import (  # noqa: F401
    backup,
    make_cluster,
    run_action,
    source_cluster,
    table_checksums,
    write_config,
)
from tests.support.pgcluster import Cluster

TABLES = 150


@pytest.fixture(scope="module")
def fetched(source_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:  # noqa: F811
    """A backup of many small tables, each with a key and an index, fetched into a directory."""
    src = source_cluster
    src.psql("create database many")
    src.psql(f"do $$ begin for i in 1..{TABLES} loop "
             "execute format('create table t%s(id int primary key, body text)', i); "
             "execute format('insert into t%s select g, md5(g::text) from generate_series(1, 300) g', i); "
             "execute format('create index on t%s(body)', i); end loop; end $$", "many")
    # Into the server's log, not a table: a parallel pg_restore truncates each table it created before loading
    # its data, so rows written into a restored table by another table's load could be lost, depending on the order.
    src.psql("create function public.note_settings() returns boolean language plpgsql volatile as $$ begin "
             "raise log 'settings-seen db=% app=% sync=% mwm=%', current_database(), "
             "current_setting('application_name'), current_setting('synchronous_commit'), "
             "current_setting('maintenance_work_mem'); return true; end $$; "
             "create table public.checked(id int check (public.note_settings())); "
             "insert into public.checked select generate_series(1, 5)", "many")
    base = tmp_path_factory.mktemp("settings")
    cfg = write_config(base / "repo.yaml", src, dbs=["many"], local=base / "repo")
    proc = backup(cfg)
    assert proc.returncode == 0, proc.stderr
    got = run_action("fetch-latest-backup", {"config": str(cfg), "db": "many", "dest": str(base / "restore")})
    assert got.code == 0, got.stdout + got.stderr
    return got.outputs["backup_dir"], rows(src, "many")


def rows(c: Cluster, db: str) -> dict:
    return table_checksums(c, db)


def seen(c: Cluster, db: str) -> list[str]:
    """The settings of the sessions that loaded public.checked's rows into `db` (the server log's lines)."""
    log = (c.datadir / "server.log").read_text()
    return sorted({f"{sync} {mwm}" for sync, mwm in
                   re.findall(rf"settings-seen db={re.escape(db)} app=pg_restore sync=(\S+) mwm=(\S+)", log)})


@pytest.fixture
def target(pg_base: Path, pg_template: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    cluster = make_cluster(pg_base, pg_template, "settings-" + request.node.name[5:40])
    try:
        yield cluster
    finally:
        cluster.stop()


def test_pg_restore_commits_without_waiting_for_the_flush_and_its_index_builds_get_maintenance_work_mem(
    fetched: tuple[str, dict], target: Cluster,
) -> None:
    backup_dir, before = fetched
    target.psql("alter role postgres set trace_sort = on")  # each sort logs its workMem (kB) in the server log
    off = run_action("restore-logical", {"backup_dir": backup_dir, "db": "by_default", "maintenance_work_mem": "96MB"},
                     env=target.env)
    assert off.code == 0, off.stdout + off.stderr
    on = run_action("restore-logical", {"backup_dir": backup_dir, "db": "waiting", "synchronous_commit": True},
                    env=target.env)
    assert on.code == 0, on.stdout + on.stderr
    assert rows(target, "by_default") == before == rows(target, "waiting")
    assert seen(target, "by_default") == ["off 96MB"]
    assert seen(target, "waiting") == ["on 256MB"]
    log = (target.datadir / "server.log").read_text()
    mems = {int(m) for m in re.findall(r"begin index sort: .*?workMem = (\d+)", log)}
    assert {96 * 1024, 256 * 1024} <= mems, mems  # 96MB asked for; the default 256MB


def _restore_in_thread(backup_dir: str, db: str, env: dict[str, str]) -> tuple[threading.Thread, list]:
    result: list = []
    t = threading.Thread(target=lambda: result.append(run_action("restore-logical", {"backup_dir": backup_dir,
                                                                                      "db": db}, env=env)))
    t.start()
    return t, result


def _wait_pid(target: Cluster, where: str, timeout: float = 60) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid = target.psql(f"select pid from pg_stat_activity where {where} limit 1")
        if pid:
            return int(pid)
        time.sleep(0.02)
    raise AssertionError(f"no session where {where}")


def test_a_server_crash_during_the_restore_is_a_failed_restore(fetched: tuple[str, dict], target: Cluster) -> None:
    backup_dir, _ = fetched
    t, result = _restore_in_thread(backup_dir, "crashed", target.env)
    pid = _wait_pid(target, "application_name = 'pg_restore' and datname = 'crashed'")
    os.kill(pid, signal.SIGKILL)  # a backend killed: the postmaster ends every session and recovers (a crash)
    t.join(180)
    r = result[0]
    assert r.code == 1, r.stdout
    assert "half-restored" in r.stdout and [c["name"] for c in r.checks("failed")] == ["pg_restore"]
    assert _answers(target, 60)  # the server recovered: it was a crash, not a stop


def _answers(c: Cluster, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return c.psql("select 'up'") == "up"
        except subprocess.CalledProcessError:
            time.sleep(0.2)
    return False


def test_a_lost_durability_connection_fails_the_restore_even_when_pg_restore_succeeded(
    fetched: tuple[str, dict], target: Cluster,
) -> None:
    backup_dir, before = fetched
    t, result = _restore_in_thread(backup_dir, "unsure", target.env)
    pid = _wait_pid(target, "application_name = 'runbook restore-logical durability'")
    # As a crash and restart would: the connection opened before pg_restore is gone; pg_restore itself goes on
    target.psql(f"select pg_terminate_backend({pid})")
    t.join(180)
    r = result[0]
    assert r.code == 1, r.stdout
    assert "connection opened before it to make its commits durable was lost" in r.stdout, r.stdout
    assert "half-restored" in r.stdout
    assert rows(target, "unsure") == before  # pg_restore did finish: only its durability is unproven
