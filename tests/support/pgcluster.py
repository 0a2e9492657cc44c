"""Throwaway PostgreSQL 15 clusters for tests: initdb once per session, a copy per cluster.

The server refuses to run as root: as root, every server command runs as the `postgres` user, under
a base directory that user can traverse (pytest's own temp dirs are 0700). Each cluster listens only
on a unix socket in its own directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"


def as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *cmd]
    return cmd


def chown_server_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(PG_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def config_as_documented(path: Path) -> None:
    """A repository config as docs/repository-config.md says: 0640 root:postgres (root and the server's user
    read it; a config the server's user owns is refused to root, which it would steer)."""
    if os.geteuid() == 0:
        os.chown(path, 0, pwd.getpwnam(PG_USER).pw_gid)
    os.chmod(path, 0o640)


def make_base_dir(prefix: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    return base


def initdb(datadir: Path, *extra: str) -> None:
    datadir.parent.mkdir(parents=True, exist_ok=True)
    chown_server_user(datadir.parent)
    subprocess.run(
        as_server_user([str(PG_BIN / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust",
                        "--no-sync", "-E", "UTF8", "--locale=C.UTF-8", *extra]),
        check=True, capture_output=True,
    )


@dataclass
class Cluster:
    datadir: Path
    socket_dir: Path
    port: int = 5432

    @property
    def env(self) -> dict[str, str]:
        return {"PGHOST": str(self.socket_dir), "PGPORT": str(self.port), "PGUSER": "postgres"}

    def start(self) -> None:
        opts = f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' -c port={self.port} -c fsync=off"
        subprocess.run(
            as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.datadir / "server.log"),
                            "-o", opts, "-w", "-t", "60", "start"]),
            check=True, capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(
            [str(PG_BIN / "psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", db,
             "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()


def clone_cluster(template: Path, dest: Path) -> Cluster:
    shutil.copytree(template, dest / "data", symlinks=True)
    chown_server_user(dest)
    os.chmod(dest / "data", 0o700)
    return Cluster(datadir=dest / "data", socket_dir=dest)
