"""check-target: can this server receive the recovery? Each check: name, status, hint.

The server answers (pg_isready); its major version is at least the backup's (a dump restores into the same
or a newer major version); the database does not exist yet (or is empty); and there is room: free disk
where the backup is fetched, and, when the server's data directory is on this host, where it is restored
(at least twice the backup's size: a dump expands and indexes are rebuilt). For a remote server the free
space of its data directory is unknown: a warning says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from steps.events import Events, resume_with
from steps.pg.tools import tool

EXPANSION = 2.0


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    db: str = Field(min_length=1, description="The database to be recovered")
    host: str | None = Field(None, description="Default: PGHOST")
    port: int | None = Field(None, description="Default: PGPORT")
    user: str | None = Field(None, description="Default: PGUSER")
    config: str | None = Field(None, description="Repository config: the newest usable backup gives the size")
    dest: str = Field(min_length=1, description="Directory the backup will be fetched into")
    allow_unsigned: bool = Field(False, description="Size the check on an unsigned backup too (a repository "
                                 "written before signing)")
    into: str = Field("", description="The database the restore will create when it is not `db` (empty: `db`): "
                      "that one must be absent; `db` names the backup")
    absent: bool = Field(True, description="The database must not exist yet (a restore into a new database): "
                         "when it does, the check fails; false: only report it")


def _newest(config: str | None, db: str, allow_unsigned: bool) -> tuple[int, int] | None:
    """(size in bytes, server_version_num) of the backup a recovery would pick, if a repository is given."""
    if not config:
        return None
    from steps.repository.catalogue import pick, scan
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.signing import trust_from_config

    cfg, _ = load_repository_config(config)
    trust = trust_from_config(cfg, allow_unsigned=allow_unsigned)
    entry = pick(scan(open_stores(cfg), trust=trust, db=db, kinds=("logical",)).entries, db)
    if entry is None:
        return None
    return entry.size_bytes, entry.manifest.database.server_version_num  # type: ignore[union-attr]


def _free(path: str) -> int:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        p = os.path.dirname(p)
    return shutil.disk_usage(p).free


def _describe_db(conn: Any, name: str) -> str:
    """What a database that exists holds, in a few words: its size, and its tables when it can be connected to."""
    import psycopg

    size = conn.execute("select pg_size_pretty(pg_database_size(%s))", (name,)).fetchone()[0]
    info = conn.info
    kw = {"host": info.host, "port": info.port, "user": info.user}
    try:
        with psycopg.connect(dbname=name, autocommit=True, connect_timeout=10, **kw) as db:
            n = db.execute("select count(*) from pg_class c join pg_namespace s on s.oid = c.relnamespace "
                           "where c.relkind in ('r', 'p') and s.nspname not in ('pg_catalog', 'information_schema')"
                           ).fetchone()[0]  # type: ignore[index]
        return f"{size}, {n} tables"
    except psycopg.Error:
        return f"{size}"


def _is_local(host: str | None) -> bool:
    h = host or os.environ.get("PGHOST", "")
    return h == "" or h.startswith("/") or h in ("localhost", "127.0.0.1", "::1", socket.gethostname())


def main(args: Args, events: Events) -> int:
    import psycopg

    conn_args = [a for a in (["-h", args.host] if args.host else []) + (["-p", str(args.port)] if args.port else [])]
    ready = subprocess.run([tool("pg_isready"), *conn_args, "-d", "postgres"], capture_output=True, text=True)
    if ready.returncode != 0:
        events.check("server answers", "failed", (ready.stdout + ready.stderr).strip()
                     + "; start the server or fix host/port before going on")
        return 1
    events.check("server answers", "ok", ready.stdout.strip())
    failed = 0
    kw: dict[str, Any] = {k: v for k, v in (("host", args.host), ("port", args.port), ("user", args.user)) if v}
    try:
        conn = psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=10, **kw)
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[-1]
        events.check("connect", "failed", f"{first}; check the user (PGUSER/DB_USER) and its password")
        print(f"check-target: cannot connect: {e}")
        return 1
    with conn:
        version = int(conn.execute("show server_version_num").fetchone()[0])  # type: ignore[index]
        data_dir = None
        with contextlib.suppress(psycopg.Error):  # not a superuser: unknown
            data_dir = conn.execute("show data_directory").fetchone()[0]  # type: ignore[index]
        target_db = args.into or args.db
        exists = conn.execute("select 1 from pg_database where datname = %s", (target_db,)).fetchone() is not None
        leftover = _describe_db(conn, target_db) if exists else ""
    newest = _newest(args.config, args.db, args.allow_unsigned)
    if newest is not None:
        size, backup_version = newest
        ok = version // 10000 >= backup_version // 10000
        failed += not ok
        events.check("major version", "ok" if ok else "failed",
                     f"server {version // 10000}, backup from {backup_version // 10000}"
                     + ("" if ok else ": restore into a server of the same or a newer major version"))
    else:
        size = 0
        events.check("major version", "warning", f"server {version // 10000}; no backup found to compare with")
    events.output("server_version", version)
    if exists:
        failed += args.absent
        events.check(f"database {target_db} absent", "failed" if args.absent else "warning",
                     f"it exists already ({leftover}): the restore refuses to write over it. A restore started "
                     "and given up, or the wrong server? Look at what it holds first. Keep it and restore under a "
                     f"new name: set restore_db (quit, `{resume_with('--set restore_db=NEW_NAME')}`, retry this "
                     "step; the application then points at NEW_NAME); or, once sure it is nobody's, drop it "
                     f"(`DROP DATABASE {target_db}` on this server) and retry this step" if args.absent else
                     f"it exists already ({leftover}; reported only: absent is false)")
        print(f"database {target_db} exists already on this server ({leftover})")
    else:
        events.check(f"database {target_db} absent", "ok", "")
    need = int(size * EXPANSION)
    free = _free(args.dest)
    ok = free >= size
    failed += not ok
    events.check("free space for the fetch", "ok" if ok else "failed",
                 f"{free / 1e9:.2f} GB free at {args.dest}, backup {size / 1e9:.2f} GB")
    if data_dir and _is_local(args.host) and os.path.exists(data_dir):
        free_data = _free(data_dir)
        ok = free_data >= need
        failed += not ok
        events.check("free space for the restore", "ok" if ok else "failed",
                      f"{free_data / 1e9:.2f} GB free in the data directory, about {need / 1e9:.2f} GB needed")
    else:
        events.check("free space for the restore", "warning",
                     "unknown: the server's data directory is not on this host; check it there "
                     f"(about {need / 1e9:.2f} GB needed)")
    print(f"server {version}; backup {size / 1e6:.1f} MB; {failed} failed check(s)")
    return 1 if failed else 0
