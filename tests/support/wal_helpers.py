"""Helpers for the WAL tests: archiving clusters with 1 MB segments, repository configs the server's user can
read, and `runbook wal-push|wal-fetch|check` run as that user from the server venv (tests.support.server_venv).

Fixtures here are imported by the test modules that use them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.pgcluster import (
    PG_BIN,
    Cluster,
    as_server_user,
    chown_server_user,
    clone_cluster,
    config_as_documented,
    initdb,
)
from tests.support.s3server import ACCESS_KEY, SECRET_KEY, S3Endpoint
from tests.support.server_venv import ServerVenv
from tests.support.signing import signing_yaml

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def wal_template(pg_base: Path) -> Path:
    """A data directory made once per session with 1 MB WAL segments (initdb --wal-segsize=1)."""
    tpl = pg_base / "wal-template" / "data"
    if not (tpl / "PG_VERSION").exists():  # modules importing this fixture each register it: make it once
        initdb(tpl, "--wal-segsize=1")
    return tpl


def server_dir(base: Path, name: str) -> Path:
    """A directory owned by the server's user (repositories, spools, credentials)."""
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    chown_server_user(d)
    return d


def credentials_file(base: Path) -> Path:
    d = server_dir(base, "aws")
    f = d / "credentials"
    f.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    os.chmod(f, 0o600)
    chown_server_user(d)
    return f


def write_config(path: Path, cluster: Cluster, *, local: Path | None = None, s3: dict[str, Any] | None = None,
                 wal: dict[str, Any] | None = None, user: str = "postgres", extra: str = "") -> Path:
    lines = ["version: 1", "cluster: " + json.dumps({"host": str(cluster.socket_dir), "port": cluster.port,
                                                      "user": user, "databases": ["postgres"],
                                                      "data_directory": str(cluster.datadir)})]
    if local is not None:
        lines.append("local: " + json.dumps({"path": str(local)}))
    if s3 is not None:
        lines.append("s3: " + json.dumps(s3))
    # Workers the commands start (uploader, read-ahead) leave soon after a test.
    wal = dict(wal or {})
    if "spool_dir" not in wal:  # in the test's directory, not the server user's home, where it would stay
        wal["spool_dir"] = str(server_dir(path.parent, "wal-spool"))
    lines.append("wal: " + json.dumps({"worker_idle_s": 3, **wal}))
    lines.append("backup: " + json.dumps({"state_dir": str(path.parent / "state")}))
    if "signing:" not in extra:
        lines.append(signing_yaml().rstrip())
    path.write_text("\n".join(lines) + "\n" + extra)
    config_as_documented(path)
    return path


def s3_section(endpoint: str, bucket: str, creds: Path, **more: Any) -> dict[str, Any]:
    return {"bucket": bucket, "prefix": "wal-tests", "endpoint_url": endpoint, "region": "us-east-1",
            "credentials_file": str(creds), "max_attempts": 2, "connect_timeout_s": 2, **more}


class WalCluster:
    """A throwaway cluster with 1 MB segments whose archive_command is our wal-push."""

    def __init__(self, cluster: Cluster, venv: ServerVenv, base: Path) -> None:
        self.cluster = cluster
        self.venv = venv
        self.base = base

    @property
    def datadir(self) -> Path:
        return self.cluster.datadir

    def configure(self, **settings: str) -> None:
        text = "".join(f"{k} = '{v}'\n" for k, v in settings.items())
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write(text)

    def archive_with(self, config: Path, **more: str) -> None:
        self.configure(archive_mode="on", archive_command=f"{self.venv.runbook} wal-push -c {config} %p", **more)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self.cluster.psql(sql, db)

    def switch(self) -> str:
        """Write something, switch segments; the name of the finished segment."""
        self.psql("select txid_current()")
        return self.psql("select pg_walfile_name(pg_switch_wal())")

    def sysid(self) -> str:
        return self.psql("select system_identifier from pg_control_system()")

    def segment_size(self) -> int:
        return int(self.psql("select setting from pg_settings where name = 'wal_segment_size'"))

    def wait_archived(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.datadir / "pg_wal" / "archive_status" / f"{name}.done").exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"{name} was not archived within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        log = self.datadir / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else ""

    def runbook(self, *args: str, cwd: Path | None = None, timeout: float = 60,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The server venv's runbook, as the server's user, in the data directory (as PostgreSQL runs it)."""
        return subprocess.run(as_server_user([str(self.venv.runbook), *args]), cwd=cwd or self.datadir,
                              capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})

    def as_server(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(as_server_user(list(cmd)), capture_output=True, text=True, check=True)


@pytest.fixture
def wal_cluster(pg_base: Path, wal_template: Path, server_venv: ServerVenv) -> Iterator[Callable[..., WalCluster]]:
    """A factory: `wal_cluster(**settings)` clones the 1 MB-segment template; the caller configures, then starts."""
    made: list[WalCluster] = []

    def make(fresh: bool = False) -> WalCluster:
        """`fresh`: its own initdb (its own system identifier), else a copy of the session's template."""
        n = next(_numbers)
        dest = pg_base / f"w{n}"
        dest.mkdir()
        if fresh:
            initdb(dest / "data", "--wal-segsize=1")
            os.chmod(dest / "data", 0o700)
            c = Cluster(datadir=dest / "data", socket_dir=dest)
        else:
            c = clone_cluster(wal_template, dest)
        wc = WalCluster(c, server_venv, dest)
        made.append(wc)
        return wc

    yield make
    for wc in made:
        wc.cluster.stop()


def pgbench(cluster: Cluster, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PG_BIN / "pgbench"), "-h", str(cluster.socket_dir), "-p", str(cluster.port),
                           "-U", "postgres", *args, "postgres"], capture_output=True, text=True, timeout=timeout,
                          check=True)


def s3_keys(s3: S3Endpoint, bucket: str, prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for page in s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = int(obj["Size"])
    return out
