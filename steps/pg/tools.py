"""PostgreSQL client tools and connections, by libpq conventions.

One place that finds `pg_dump`, `pg_restore`, ... (PostgreSQL 15's own binaries first, then PATH),
builds their connection arguments from the repository config or an action's host/port, and says how one
failed (`ToolFailed`, with its last stderr lines). psycopg is imported only by `connect`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from runbook.errors import RunbookError

PG_BIN = os.environ.get("RUNBOOK_PG_BIN", "/usr/lib/postgresql/15/bin")


class ToolFailed(RunbookError):
    """A PostgreSQL client tool exited non-zero; the message carries its last stderr lines."""

    def __init__(self, tool: str, code: int, stderr: str, hint: str | None = None) -> None:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        tail = "\n".join(lines[-8:]) or "(no output)"
        super().__init__(f"{tool} failed (exit {code}):\n{tail}", hint=hint)
        self.tool = tool
        self.returncode = code
        self.stderr = stderr


def tool(name: str) -> str:
    path = os.path.join(PG_BIN, name)
    if os.access(path, os.X_OK):
        return path
    found = shutil.which(name)
    if not found:
        raise RunbookError(f"{name} is not installed", hint="install the PostgreSQL 15 client (postgresql-client-15)")
    return found


@dataclass(frozen=True)
class Conn:
    """Where to connect: None means libpq's default (PGHOST, PGPORT, PGUSER, service files)."""

    host: str | None = None
    port: int | None = None
    user: str | None = None

    def args(self) -> list[str]:
        out: list[str] = []
        if self.host:
            out += ["-h", self.host]
        if self.port:
            out += ["-p", str(self.port)]
        if self.user:
            out += ["-U", self.user]
        return out

    def kwargs(self, dbname: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"dbname": dbname}
        if self.host:
            kw["host"] = self.host
        if self.port:
            kw["port"] = self.port
        if self.user:
            kw["user"] = self.user
        return kw

    def describe(self, dbname: str) -> str:
        host = self.host or os.environ.get("PGHOST") or "localhost"
        port = self.port or os.environ.get("PGPORT") or 5432
        return f"{host}:{port}/{dbname}"


def dbname_option(dbname: str) -> str:
    """`--dbname=...` for libpq's command-line tools, naming `dbname` as a database and nothing else.

    pg_restore, vacuumdb, psql... expand their --dbname as a connection string when it holds `=` or starts
    with `postgresql://`: `dbname=victim` would connect to the database victim, `host=... dbname=...` elsewhere
    entirely. A connection string holding only `dbname='...'` (quoted as libpq quotes: backslash before `'` and
    `\\`) is expanded once, and its value is then taken as the name, whatever it holds."""
    quoted = dbname.replace("\\", "\\\\").replace("'", "\\'")
    return f"--dbname=dbname='{quoted}'"


def connect(conn: Conn, dbname: str, *, autocommit: bool = False, application_name: str = "runbook") -> Any:
    """A psycopg connection; a failure becomes a RunbookError saying where it tried."""
    import psycopg

    try:
        return psycopg.connect(**conn.kwargs(dbname), autocommit=autocommit, application_name=application_name,
                               connect_timeout=int(os.environ.get("PGCONNECT_TIMEOUT", "15")))
    except psycopg.OperationalError as e:
        raise RunbookError(f"cannot connect to {conn.describe(dbname)}: {str(e).strip()}",
                           hint="check the host/port/user (libpq: PGHOST, PGPORT, PGUSER) and ~/.pgpass") from None


def version(name: str) -> str:
    return subprocess.run([tool(name), "--version"], capture_output=True, text=True).stdout.strip()
