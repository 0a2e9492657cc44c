"""An archiving primary for base backup and PITR tests: 1 MB WAL segments, a non-superuser backup role with
REPLICATION, WAL archived into a repository, a repository config, and helpers to write timestamped rows.

Archiving goes through the real `runbook wal-push` / `wal-fetch`, run from the server-readable virtual
environment of tests/support/server_venv.py. Test modules import the fixtures: `pitr_template_fixture`,
`primary_fixture` (registered as `pitr_template` and `primary`).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import PG_BIN, Cluster, as_server_user, chown_server_user, config_as_documented
from tests.support.signing import signing_yaml

BACKUP_ROLE = "backup_user"


def sysid(datadir: Path) -> str:
    """The system identifier: the first 8 bytes of global/pg_control, little-endian."""
    return str(int.from_bytes((datadir / "global" / "pg_control").read_bytes()[:8], "little"))


@dataclass
class Primary:
    cluster: Cluster
    repo: Path
    config: Path
    sysid: str
    archive_command: str
    restore_command: str | None  # None: the pitr action's default (runbook wal-fetch)
    runbook_exe: str | None
    restored: list[Path] = field(default_factory=list)

    @property
    def home(self) -> Path:
        """The directory make_primary filled: the data directory, the repository, the config, the socket."""
        return self.cluster.socket_dir

    @property
    def wal_dir(self) -> Path:
        return self.repo / "clusters" / self.sysid / "wal"

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self.cluster.psql(sql, db)

    def switch_wal(self) -> None:
        """Close the current segment and wait until the archiver has archived it (pg_stat_archiver)."""
        name = self.psql("select pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 30
        while True:
            last, failed = self.psql("select coalesce(last_archived_wal, ''), failed_count from pg_stat_archiver"
                                     ).split("|")
            if last[:24] >= name:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} was not archived ({failed} failures); see {self.cluster.datadir}")
            time.sleep(0.1)

    def crash(self) -> None:
        subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.cluster.datadir), "-m", "immediate",
                                       "-w", "stop"]), capture_output=True)

    def pitr_args(self, pgdata: Path, **kw: object) -> dict[str, object]:
        args: dict[str, object] = {"config": str(self.config), "pgdata": str(pgdata), "socket_dir": str(pgdata.parent),
                                   "port": 5432, **kw}
        if self.restore_command:
            args["restore_command"] = self.restore_command
        if self.runbook_exe:
            args["runbook_exe"] = self.runbook_exe
        self.restored.append(pgdata)
        return args

    def stop_restored(self) -> None:
        stop_servers(self.restored)


def stop_servers(datadirs: Iterable[Path]) -> None:
    """The servers still running on these data directories (restored ones), stopped at once."""
    for d in datadirs:
        if (d / "postmaster.pid").exists():
            subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(d), "-m", "immediate", "-w", "stop"]),
                           capture_output=True)


def restored_psql(pgdata: Path, sql: str, db: str = "postgres") -> str:
    out = subprocess.run([str(PG_BIN / "psql"), "-h", str(pgdata.parent), "-p", "5432", "-U", "postgres", "-d", db,
                          "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def wal_commands(repo: Path, config: Path, sid: str, venv_runbook: str | None) -> tuple[str, str | None]:
    """(archive_command, restore_command or None for the action's default)."""
    if venv_runbook:
        return f"{venv_runbook} wal-push -c {config} %p", None
    wal = repo / "clusters" / sid / "wal"
    return f"test ! -f {wal}/%f && cp %p {wal}/%f", f"cp {wal}/%f %p"


def make_primary(template: Path, dest: Path, *, s3: dict[str, str] | None = None, local: bool = True,
                 venv_runbook: str | None = None, extra_conf: str = "", config_lines: tuple[str, ...] = ()) -> Primary:
    """A fresh archiving primary copied from `template` (initdb --wal-segsize=1), started, with the backup role."""
    shutil.copytree(template, dest / "data", symlinks=True)
    datadir = dest / "data"
    repo = dest / "repo"
    sid = sysid(datadir)
    (repo / "clusters" / sid / "wal").mkdir(parents=True)
    config = dest / "repository.yaml"
    lines = ["version: 1", f"cluster: {{host: {dest}, port: 5432, user: {BACKUP_ROLE}}}",
             f"backup: {{state_dir: {dest / 'state'}}}"]
    if not any(ln.startswith("basebackup:") for ln in config_lines):
        lines.append("basebackup: {wal_wait_s: 20}")
    if local:
        lines.append(f"local: {{path: {repo}}}")
    if s3:
        lines.append("s3: {" + ", ".join(f"{k}: {v}" for k, v in s3.items()) + "}")
    if not any(ln.startswith("signing:") for ln in config_lines):
        lines.append(signing_yaml().rstrip())
    if not any(ln.startswith("wal:") for ln in config_lines):
        # the spool in the test's directory (not the server user's home), its workers gone soon after the test
        lines.append(f"wal: {{spool_dir: {dest / 'spool'}, worker_idle_s: 5}}")
    lines += config_lines
    config.write_text("\n".join(lines) + "\n")
    archive_command, restore_command = wal_commands(repo, config, sid, venv_runbook)
    with open(datadir / "postgresql.auto.conf", "a") as f:
        f.write(f"archive_mode = on\narchive_command = '{archive_command}'\nwal_level = replica\n"
                f"log_min_messages = info\n{extra_conf}")
    chown_server_user(dest)
    os.chmod(datadir, 0o700)
    os.chmod(dest, 0o755)
    config_as_documented(config)
    cluster = Cluster(datadir=datadir, socket_dir=dest)
    cluster.start()
    cluster.psql(f"CREATE ROLE {BACKUP_ROLE} LOGIN REPLICATION; GRANT pg_read_all_data TO {BACKUP_ROLE}")
    cluster.psql("CREATE TABLE events (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), "
                 "note text)")
    return Primary(cluster, repo, config, sid, archive_command, restore_command,
                   venv_runbook if venv_runbook else None)


def write_rows(p: Primary, n: int, note: str, pause: float = 0.0) -> list[str]:
    """n rows, each its own transaction; returns their commit-order notes."""
    notes = []
    for i in range(n):
        p.psql(f"INSERT INTO events (note) VALUES ('{note}-{i}')")
        notes.append(f"{note}-{i}")
        if pause:
            time.sleep(pause)
    return notes


_n = itertools.count(1)


def next_dir(base: Path) -> Path:
    d = base / f"pitr{next(_n)}"
    d.mkdir()
    return d


@pytest.fixture(scope="session", name="pitr_template")
def pitr_template_fixture(pg_base: Path) -> Path:
    """initdb once per session, with 1 MB WAL segments."""
    from tests.support.pgcluster import initdb

    tpl = pg_base / "pitr-template" / "data"
    if not (tpl / "PG_VERSION").exists():  # modules that import this fixture share the one template
        initdb(tpl, "--wal-segsize=1")
    return tpl


_venv: list[str] = []


def server_runbook() -> str:
    """`runbook` of a server-readable venv (tests/support/server_venv.py), built once per test process however many
    modules ask for it."""
    if not _venv:
        from tests.conftest import ROOT
        from tests.support.server_venv import build_server_venv

        base = Path(tempfile.mkdtemp(prefix="runbook-server-venv-"))
        atexit.register(shutil.rmtree, base, True)
        _venv.append(str(build_server_venv(ROOT, base).runbook))
    return _venv[0]


@pytest.fixture(scope="session", name="server_runbook")
def server_runbook_fixture() -> str:
    return server_runbook()


@pytest.fixture(name="primary")
def primary_fixture(pg_base: Path, pitr_template: Path, server_runbook: str) -> Iterator[Primary]:
    """An archiving primary whose archive_command is the real `runbook wal-push` (the server venv's)."""
    p = make_primary(pitr_template, next_dir(pg_base), venv_runbook=server_runbook)
    try:
        yield p
    finally:
        p.stop_restored()
        p.crash()


@pytest.fixture(name="archiving_primary")
def archiving_primary_fixture(pg_base: Path, pitr_template: Path, server_runbook: str) -> Iterator[Primary]:
    """The primary fixture's, with archive_timeout = 60 (the RPO `runbook status` holds the archive to)."""
    p = make_primary(pitr_template, next_dir(pg_base), venv_runbook=server_runbook,
                     extra_conf="archive_timeout = 60\n")
    try:
        yield p
    finally:
        p.crash()


def serve_app(p: Primary, items: str) -> tuple[str, str]:
    """The primary serves the database `app` (a table `items`, made and filled by the SQL `items`, readable by the
    backup role); its config's cluster names it, with checks that the table is there and not empty. Returns the
    config's text before and after."""
    before = p.config.read_text()
    cluster = f"cluster: {{host: {p.home}, port: 5432, user: {BACKUP_ROLE}}}"
    assert cluster in before
    after = before.replace(cluster, cluster[:-1] + ", databases: [app]}") + \
        "checks: {expect_tables: [items], smoke: ['select count(*) > 0 from items']}\n"
    p.config.write_text(after)
    p.psql("create database app")
    p.psql(items, "app")
    p.psql(f"grant select on all tables in schema public to {BACKUP_ROLE}", "app")
    return before, after


# --- running the pitr action and basebackup as the engine and an operator would ---------------------


def pitr(args: dict[str, object], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "steps", "pitr"], input=json.dumps(args), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def outputs(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    out = {}
    for line in proc.stderr.splitlines():
        if line.startswith("[event] "):
            ev = json.loads(line[8:])
            if ev["type"] == "output":
                out[ev["name"]] = ev["value"]
    return out


def basebackup(p: Primary) -> dict[str, object]:
    r = run_cli("basebackup", "-c", str(p.config), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "readable in local" in r.stdout
    bdir = max((p.repo / "clusters" / p.sysid / "base").iterdir())  # the newest: ids are UTC timestamps
    return dict(json.loads((bdir / "manifest.json").read_text()))


def notes(pgdata: Path) -> list[str]:
    out = restored_psql(pgdata, "select coalesce(string_agg(note, ',' order by id), '') from events")
    return out.split(",") if out else []
