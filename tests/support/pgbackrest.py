"""A real pgBackRest (Debian's 2.45) beside a real PostgreSQL 15 primary, for the engine's tests.

`make_pgbr_primary` copies the PITR template (1 MB WAL segments), writes a pgbackrest.conf of its own (the
repository, and pgBackRest's log and lock directories, all in the test's directory and owned by the server's
user; the repository 0700), sets `archive_command = 'pgbackrest --config=... --stanza=... archive-push %p'`,
starts the server, makes the stanza (`stanza-create`) and writes the product's repository config with
`engine: pgbackrest` (the product's own records in a local repository of their own beside it).
The repository is posix (a directory) or S3 on the local moto over TLS (`s3=`: tests/support/s3server.py's
`s3_tls_server`: pgBackRest's S3 client speaks TLS only; it verifies the self-signed certificate given as
repo1-storage-ca-file, for the name localhost).

`pgbackrest_exe()` is the executable; a test that needs it and finds none fails saying how to install it.
Fixtures for modules to import: `pgbr_primary_fixture` (registered as `pgbr_primary`: a posix repository).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pgcluster import PG_BIN, Cluster, as_server_user, chown_server_user, config_as_documented
from tests.support.pitr_cluster import BACKUP_ROLE, sysid
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, TlsEndpoint
from tests.support.signing import signing_yaml

INSTALL = "apt-get install pgbackrest (or scripts/setup.sh, which installs it when missing)"


def pgbackrest_exe() -> str:
    exe = shutil.which("pgbackrest")
    if exe is None:
        pytest.fail(f"pgbackrest is not installed; these tests need the real one: {INSTALL}")
    return exe


@dataclass
class PgbrPrimary:
    cluster: Cluster
    dest: Path
    stanza: str
    conf: Path  # pgBackRest's config (repository, log, lock)
    repo: Path | None  # the posix repository (None: S3)
    config: Path  # the product's repository config (engine: pgbackrest)
    own_repo: Path  # the product's own repository: its records, never pgBackRest's files
    sysid: str
    archive_command: str

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self.cluster.psql(sql, db)

    def pgbackrest(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """pgbackrest as the server's user with this primary's config and stanza."""
        cmd = as_server_user([pgbackrest_exe(), f"--config={self.conf}", f"--stanza={self.stanza}", *args])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def full_backup(self) -> str:
        """A full backup by pgBackRest itself; its label."""
        self.pgbackrest("backup", "--type=full")
        out = self.pgbackrest("info", "--output=json").stdout
        import json

        return str(json.loads(out)[0]["backup"][-1]["label"])

    def switch_wal(self, timeout: float = 30) -> str:
        """Close the current segment and wait until the archiver has archived it; its name."""
        name = self.psql("select pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout
        while True:
            last, failed = self.psql("select coalesce(last_archived_wal, ''), failed_count from pg_stat_archiver"
                                     ).split("|")
            if last[:24] >= name:
                return name
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} was not archived ({failed} failures); see {self.cluster.datadir}")
            time.sleep(0.1)

    def break_archiving(self) -> None:
        """archive_command fails from now on (a repository the command cannot reach), reloaded."""
        self.psql("ALTER SYSTEM SET archive_command = 'pgbackrest --config=/nonexistent/pgbackrest.conf "
                  f"--stanza={self.stanza} archive-push %p'")
        self.psql("select pg_reload_conf()")

    def stop(self) -> None:
        subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.cluster.datadir), "-m", "immediate",
                                       "-w", "stop"]), capture_output=True)


def _conf_text(dest: Path, stanza: str, datadir: Path, s3: tuple[TlsEndpoint, str] | None) -> str:
    lines = ["[global]", f"log-path={dest / 'pgbr-log'}", f"lock-path={dest / 'pgbr-lock'}",
             "log-level-console=warn", "log-level-file=info", "repo1-retention-full=4", "archive-timeout=10",
             "start-fast=y", "compress-type=lz4", "repo1-bundle=y"]
    if s3 is None:
        lines.append(f"repo1-path={dest / 'pgbr-repo'}")
    else:
        tls, bucket = s3
        lines += ["repo1-type=s3", f"repo1-path=/{dest.name}", f"repo1-s3-bucket={bucket}",
                  "repo1-s3-endpoint=localhost", f"repo1-storage-port={tls.port}", f"repo1-s3-region={REGION}",
                  "repo1-s3-uri-style=path", f"repo1-storage-ca-file={tls.cert}", f"repo1-s3-key={ACCESS_KEY}",
                  f"repo1-s3-key-secret={SECRET_KEY}"]
    lines += [f"[{stanza}]", f"pg1-path={datadir}", f"pg1-socket-path={dest}", "pg1-port=5432"]
    return "\n".join(lines) + "\n"


def make_pgbr_primary(template: Path, dest: Path, *, stanza: str = "main", s3: tuple[TlsEndpoint, str] | None = None,
                      options: dict[str, str] | None = None, extra_yaml: tuple[str, ...] = ()) -> PgbrPrimary:
    """A started, archiving primary whose WAL goes to pgBackRest, the stanza made. `s3`: (the TLS endpoint, a
    bucket) for an S3 repository, else a posix one. `options`: the product config's pgbackrest.options, beside
    pg1-socket-path and pg1-port (which only the product's commands need, so they are given there, not in the
    pgbackrest.conf archive-push reads)."""
    exe = pgbackrest_exe()
    shutil.copytree(template, dest / "data", symlinks=True)
    datadir = dest / "data"
    for sub in ("pgbr-log", "pgbr-lock", "pgbr-repo", "own-repo", "state"):
        (dest / sub).mkdir()
    conf = dest / "pgbackrest.conf"
    conf.write_text(_conf_text(dest, stanza, datadir, s3))
    archive_command = f"{exe} --config={conf} --stanza={stanza} archive-push %p"
    with open(datadir / "postgresql.auto.conf", "a") as f:
        f.write(f"archive_mode = on\narchive_command = '{archive_command}'\nwal_level = replica\n"
                "log_min_messages = info\n")
    chown_server_user(dest)
    os.chmod(dest, 0o755)
    os.chmod(datadir, 0o700)
    os.chmod(dest / "pgbr-repo", 0o700)
    os.chmod(conf, 0o600)  # it may hold the S3 key
    opts = {"pg1-socket-path": str(dest), "pg1-port": "5432", **(options or {})}
    config = dest / "repository.yaml"
    lines = ["version: 1", f"cluster: {{host: {dest}, port: 5432, user: {BACKUP_ROLE}, data_directory: {datadir}}}",
             f"backup: {{state_dir: {dest / 'state'}}}", f"local: {{path: {dest / 'own-repo'}}}",
             "engine: pgbackrest", "pgbackrest:", f"  stanza: {stanza}", f"  config: {conf}", "  options:"]
    lines += [f"    {k}: '{v}'" for k, v in opts.items()]
    lines.append(signing_yaml().rstrip())
    lines += extra_yaml
    config.write_text("\n".join(lines) + "\n")
    config_as_documented(config)
    cluster = Cluster(datadir=datadir, socket_dir=dest)
    cluster.start()
    p = PgbrPrimary(cluster, dest, stanza, conf, None if s3 else dest / "pgbr-repo", config, dest / "own-repo",
                    sysid(datadir), archive_command)
    try:
        cluster.psql(f"CREATE ROLE {BACKUP_ROLE} LOGIN REPLICATION; GRANT pg_read_all_data TO {BACKUP_ROLE}")
        cluster.psql("CREATE TABLE events (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), "
                     "note text)")
        p.pgbackrest("stanza-create")
    except BaseException:
        p.stop()
        raise
    return p


_n = itertools.count(1)


def next_pgbr_dir(base: Path) -> Path:
    d = base / f"pgbr{next(_n)}"
    d.mkdir()
    return d


@pytest.fixture(name="pgbr_primary")
def pgbr_primary_fixture(pg_base: Path, pitr_template: Path) -> Iterator[PgbrPrimary]:
    """An archiving primary with a posix pgBackRest repository, the stanza made, no backup yet."""
    p = make_pgbr_primary(pitr_template, next_pgbr_dir(pg_base))
    try:
        yield p
    finally:
        p.stop()
