"""Helpers for the backup tests: a cluster with a least-privilege backup role, repository configs,
the real `runbook backup|backups|prune` and `python -m steps ACTION` in child processes, table checksums.

Fixtures here are imported by the test modules that use them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import PG_BIN, Cluster, clone_cluster
from tests.support.s3server import credentials_env
from tests.support.signing import signing_yaml

BACKUP_ROLE = "backup_user"


def make_cluster(pg_base: Path, pg_template: Path, name: str) -> Cluster:
    dest = pg_base / name
    dest.mkdir()
    cluster = clone_cluster(pg_template, dest)
    cluster.start()
    cluster.psql(f"create role {BACKUP_ROLE} login in role pg_read_all_data")
    return cluster


@pytest.fixture(scope="module")
def source_cluster(pg_base: Path, pg_template: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """One cluster per test module (started once), with the backup role."""
    name = "m-" + request.module.__name__.rsplit(".", 1)[-1].replace("test_", "")
    cluster = make_cluster(pg_base, pg_template, name)
    try:
        yield cluster
    finally:
        cluster.stop()


_databases = itertools.count(1)


def new_database(cluster: Cluster, prefix: str, *sql: str) -> str:
    """A database of a name not used before in this process (`prefix` and a number) in `cluster`, filled by the
    `sql` statements run in it: its name."""
    name = f"{prefix}{next(_databases)}"
    cluster.psql(f"create database {name}")
    for statement in sql:
        cluster.psql(statement, name)
    return name


def write_config(path: Path, cluster: Cluster, *, dbs: list[str], local: Path | None = None,
                 s3: dict[str, Any] | None = None, extra: str = "", state: Path | None = None) -> Path:
    lines = [
        "version: 1",
        "cluster:",
        f"  host: {cluster.socket_dir}",
        f"  port: {cluster.port}",
        f"  user: {BACKUP_ROLE}",
        f"  databases: [{', '.join(dbs)}]",
    ]
    if local is not None:
        lines.append(f"local: {{path: {local}}}")
    if s3 is not None:
        lines.append("s3: " + json.dumps(s3))
    lines.append(f"backup: {{state_dir: {state or path.parent / 'state'}}}")
    if "signing:" not in extra:
        lines.append(signing_yaml().rstrip())
    text = "\n".join(lines) + "\n" + textwrap.dedent(extra).strip() + "\n"
    path.write_text(text)
    return path


def cli_env(**more: str) -> dict[str, str]:
    return {**credentials_env(), **more}


def backup(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("backup", "-c", str(config), *args, env=cli_env(**(env or {})), timeout=180)


def backups_json(config: Path) -> dict[str, Any]:
    proc = run_cli("backups", "-c", str(config), "--json", env=cli_env())
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def status(config_dir: Path) -> dict[str, Any]:
    return json.loads((config_dir / "state" / "backup-status.json").read_text())  # type: ignore[no-any-return]


@dataclass
class ActionResult:
    code: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, Any]:
        return {e["name"]: e["value"] for e in self.events if e["type"] == "output"}

    def checks(self, status: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "check" and (status is None or e["status"] == status)]


def run_action(name: str, args: dict[str, Any], *, env: dict[str, str] | None = None, timeout: float = 180) -> ActionResult:
    """`python -m steps NAME` as the engine runs it: JSON args on stdin, events on RUNBOOK_EVENT_FD."""
    r, w = os.pipe()
    full_env = {**os.environ, **credentials_env(), **(env or {}), "RUNBOOK_EVENT_FD": str(w)}
    proc = subprocess.Popen([sys.executable, "-m", "steps", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, pass_fds=(w,), env=full_env, cwd=ROOT)
    os.close(w)
    chunks: list[bytes] = []

    def drain() -> None:
        with os.fdopen(r, "rb") as f:
            chunks.append(f.read())

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    out, err = proc.communicate(json.dumps(args), timeout=timeout)
    t.join(timeout=10)
    events = [json.loads(line) for line in b"".join(chunks).decode().splitlines() if line.strip()]
    return ActionResult(proc.returncode, out, err, events)


def table_checksums(cluster: Cluster, db: str) -> dict[str, tuple[int, str]]:
    """Per user table: (row count, md5 of all rows as text in a fixed order)."""
    tables = cluster.psql(
        "select format('%I.%I', schemaname, relname) from pg_stat_user_tables order by 1", db).splitlines()
    out = {}
    for t in tables:
        row = cluster.psql(f"select count(*) || ' ' || md5(coalesce(string_agg(x::text, '|' order by x::text), '')) "
                           f"from {t} x", db)
        n, digest = row.split()
        out[t] = (int(n), digest)
    return out


def psql_as(cluster: Cluster, sql: str, db: str, user: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PG_BIN / "psql"), "-h", str(cluster.socket_dir), "-p", str(cluster.port), "-U", user,
                           "-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True)
