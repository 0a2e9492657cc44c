"""Running a PostgreSQL 15 server the tool owns (the sandbox, scratch clusters): initdb, start, stop.

The server refuses to run as root: when the tool runs as root, every server command runs as an
unprivileged user (`postgres` by default) under a directory that user can traverse. Servers listen on a
unix socket in their own directory only (`listen_addresses=''`), never on 5432 of the machine.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import RunbookError
from steps.pg.tools import PG_BIN, dbname_option

SERVER_USER = os.environ.get("RUNBOOK_SERVER_USER", "postgres")


def server_user() -> pwd.struct_passwd | None:
    """The user the server runs as when we are root; None when we are not root (the server runs as us)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RunbookError(
            f"running as root, and there is no {SERVER_USER!r} user to run the PostgreSQL server as",
            hint="install postgresql-15 (it creates the user), or run as an ordinary user",
        ) from None


def as_server(cmd: list[str]) -> list[str]:
    pw = server_user()
    return ["runuser", "-u", pw.pw_name, "--", *cmd] if pw else cmd


def give_to_server(path: Path) -> None:
    """chown a tree to the server's user (only when we are root), through directory descriptors that never
    follow a link (steps.fs.chown_tree): a link in the tree is chowned itself, never its target, and a `path`
    that is a symlink is refused."""
    from steps.fs import chown_tree

    pw = server_user()
    if pw is None:
        return
    if os.path.isdir(path) or os.path.islink(path):
        chown_tree(path, pw.pw_uid, pw.pw_gid)
    else:
        os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _bin(name: str) -> str:
    path = os.path.join(PG_BIN, name)
    if not os.access(path, os.X_OK):
        raise RunbookError(f"{path} is missing", hint="install the PostgreSQL 15 server: apt-get install postgresql-15")
    return path


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RunbookError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return proc


@dataclass(frozen=True)
class Server:
    """A cluster the tool runs: data directory, socket directory, port (only the socket's name)."""

    datadir: Path
    socket_dir: Path
    port: int = 5432

    @property
    def log(self) -> Path:
        return self.socket_dir / "server.log"

    def env(self, user: str = "postgres") -> dict[str, str]:
        return {"PGHOST": str(self.socket_dir), "PGPORT": str(self.port), "PGUSER": user}

    def initdb(self, *extra: str) -> None:
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        give_to_server(self.datadir.parent)
        _run(as_server([_bin("initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--locale=C.UTF-8", "--no-sync", *extra]), "initdb")

    def running(self) -> bool:
        proc = subprocess.run(as_server([_bin("pg_ctl"), "-D", str(self.datadir), "status"]), capture_output=True)
        return proc.returncode == 0

    def start(self, *settings: str) -> None:
        if self.running():
            return
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        give_to_server(self.socket_dir)
        opts = " ".join([f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}'",
                         f"-c port={self.port}", *(f"-c {s}" for s in settings)])
        _run(as_server([_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.log), "-o", opts, "-w", "-t", "60",
                        "start"]), "starting the PostgreSQL server")
        # pg_ctl -w returns when the server accepts connections; make sure it answers us.
        deadline = time.monotonic() + 30
        while subprocess.run([_bin("pg_isready"), "-h", str(self.socket_dir), "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RunbookError(f"the server on {self.socket_dir} does not answer; see {self.log}")
            time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        if self.datadir.exists() and self.running():
            _run(as_server([_bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"]),
                 "stopping the PostgreSQL server")

    def psql(self, sql: str, db: str = "postgres", user: str = "postgres") -> str:
        """Run SQL as a script (statements one by one, so CREATE DATABASE works); stops at the first error."""
        proc = subprocess.run([_bin("psql"), "-h", str(self.socket_dir), "-p", str(self.port), "-U", user, dbname_option(db),
                               "-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-"], input=sql, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise RunbookError(f"psql failed (exit {proc.returncode}):\n{tail}")
        return proc.stdout.strip()


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
