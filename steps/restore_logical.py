"""restore-logical: a fetched logical backup into a new database, with everything a logical restore carries.

1. Re-check every file of the backup directory against its manifest (a tampered copy restores nothing),
   unless fetch-latest-backup checked them and they provably are unchanged since (steps.repository.verified:
   its stamp, owned by root or us in a directory nobody else may write, every file's size, mtime, inode,
   ctime and device the same). Files are opened without following links. The SQL files run as superuser
   (globals.sql, user_mappings.sql) are read once, checked against their sha256, and those very bytes run.
2. Refuse a target database that exists and is not empty (a half-restored target is dropped by the
   operator, deliberately, never by this action).
3. Restore the globals role by role (steps.backup.globals_sql): existing roles are reported and left as they are.
4. Same name as the backup's database, and no such database yet: `pg_restore --create`, which brings the
   database-level settings, its ACL and `ALTER ROLE ... IN DATABASE ... SET` along (PostgreSQL 15 dumps them
   only for --create). Another name (or an existing empty database): create it from template0 with the
   manifest's encoding, locale and owner, then apply those settings and the ACL from the manifest (a backup from
   an encrypted repository keeps the settings in their own object, `database.settings_path`: decrypted by the
   fetch like every object, read once and checked against its sha256 before anything is restored).
5. `pg_restore --jobs N --exit-on-error` (progress from its --verbose lines; its sessions get, through
   PGOPTIONS, `maintenance_work_mem` and, unless `synchronous_commit`, synchronous_commit off, made durable by
   one synchronous commit after it on a connection opened before it: `_Witness`), then ANALYZE
   (`vacuumdb --analyze-only --jobs N`), timed separately. Between the two, the user mappings' options the
   backup kept beside the dump (`user_mappings.sql`: pg_dump cannot see them as a non-superuser). The
   manifest's notes (what the backup does not carry, e.g. subscriptions) are printed first.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbook.errors import RunbookError
from steps.events import Events
from steps.fs import UnsafePath, hash_beneath, open_dir, open_read_beneath, private_enough
from steps.pg.tools import Conn, ToolFailed, connect, dbname_option, tool
from steps.repository import layout
from steps.repository.manifest import (
    DatabaseFacts,
    LogicalManifest,
    invalid_reason,
    parse_logical,
    parse_settings,
    sha256_bytes,
)
from steps.repository.verified import checked_unchanged


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backup_dir: str = Field(min_length=1, description="A directory fetch-latest-backup made (dump/, globals.sql)")
    db: str = Field(min_length=1, max_length=63,
                    description="Name of the database to restore into, taken as a name: never a connection "
                                "string (`dbname=x` is a database called that)")
    into: str = Field("", max_length=63, description="Restore under this name instead of `db` (empty: `db`): when "
                      "the database `db` exists on the target and must be kept (a restore given up half-way, say)")
    jobs: int = Field(2, ge=1, le=64, description="pg_restore --jobs (about the target's cores)")
    host: str | None = Field(None, description="Target server host or socket directory (default: PGHOST)")
    port: int | None = Field(None, description="Target server port (default: PGPORT)")
    user: str | None = Field(None, description="Role to restore as (default: PGUSER); must create roles/databases")
    maintenance_db: str = Field("postgres", description="Database to connect to for CREATE DATABASE")
    globals: bool = Field(True, description="Restore the roles (and tablespaces) of the backup's cluster first")
    analyze: bool = Field(True, description="ANALYZE after the restore")
    verify: bool = Field(True, description="Check every file's sha256 before restoring (files fetch-latest-backup "
                                           "checked and that are unchanged since are not hashed again)")
    maintenance_work_mem: str = Field("256MB", pattern=r"^\d+\s*(kB|MB|GB)?$",
                                      description="For the restore's index builds (per job)")
    synchronous_commit: bool = Field(False, description="Let pg_restore's sessions wait for each commit's WAL "
                                     "flush (false: they do not, and one synchronous commit after pg_restore, on a "
                                     "connection opened before it, flushes it all before the restore is reported "
                                     "done; measured faster with many objects: docs/performance.md)")

    @model_validator(mode="after")
    def _into(self) -> Args:
        if self.into:
            self.db, self.into = self.into, ""
        return self


_NOT_EMPTY = """
select (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_toast%'
          and n.nspname not like 'pg\\_temp\\_%')
     + (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname not in ('pg_catalog', 'information_schema'))
     + (select count(*) from pg_largeobject_metadata)
"""

_PRIVILEGES = {"CREATE", "CONNECT", "TEMPORARY"}


def _exists(pg: Any, name: str) -> bool:
    with pg.cursor() as cur:
        cur.execute("select 1 from pg_database where datname = %s", (name,))
        return cur.fetchone() is not None


def _role_exists(pg: Any, name: str) -> bool:
    with pg.cursor() as cur:
        cur.execute("select 1 from pg_roles where rolname = %s", (name,))
        return cur.fetchone() is not None


def create_like(pg: Any, db: str, facts: DatabaseFacts, *, create: bool) -> list[str]:
    """Create `db` as the manifest describes it (when `create`), then its settings and ACL. Returns notes."""
    from psycopg import sql

    notes: list[str] = []
    owner = facts.owner if _role_exists(pg, facts.owner) else None
    if owner is None:
        notes.append(f"role {facts.owner} (the original owner) does not exist: the database is owned by the restoring role")
    ident = sql.Identifier(db)
    if create:
        parts = [sql.SQL("CREATE DATABASE {} WITH TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            ident, sql.Literal(facts.encoding), sql.Literal(facts.collation), sql.Literal(facts.ctype))]
        if facts.locale_provider == "icu" and facts.icu_locale:
            parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(facts.icu_locale)))
        if owner:
            parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
        if facts.connection_limit != -1:
            parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(facts.connection_limit)))
        pg.execute(sql.SQL(" ").join(parts))
    elif owner:
        pg.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, sql.Identifier(owner)))
    for s in facts.settings:
        name, _, value = s.setting.partition("=")
        if s.role is not None and not _role_exists(pg, s.role):
            notes.append(f"setting {name} for role {s.role} skipped: the role does not exist")
            continue
        # set_config takes the value exactly as pg_db_role_setting stores it (lists included); FROM CURRENT
        # stores it back, so no quoting rules of individual settings are needed.
        with pg.transaction():
            pg.execute("select set_config(%s, %s, true)", (name, value))
            if s.role is None:
                pg.execute(sql.SQL("ALTER DATABASE {} SET {} FROM CURRENT").format(ident, sql.Identifier(name)))
            else:
                pg.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} FROM CURRENT").format(
                    sql.Identifier(s.role), ident, sql.Identifier(name)))
    if facts.acl is not None:
        # The privileges exactly as recorded: the defaults (PUBLIC's CONNECT and TEMPORARY, the owner's all)
        # are revoked first, then each recorded privilege is granted.
        pg.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
        if owner:
            pg.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(ident, sql.Identifier(owner)))
        for a in facts.acl:
            if a.privilege not in _PRIVILEGES:
                continue
            if a.grantee and not _role_exists(pg, a.grantee):
                notes.append(f"{a.privilege} of role {a.grantee} on the database skipped: the role does not exist")
                continue
            who = sql.SQL("PUBLIC") if a.grantee == "" else sql.Identifier(a.grantee)
            stmt = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(sql.SQL(a.privilege), ident, who)
            if a.grantable:
                stmt = sql.SQL("{} WITH GRANT OPTION").format(stmt)
            pg.execute(stmt)
        if owner is None:
            notes.append("the original owner's privileges on the database were not restored (no such role)")
    return notes


def _read_beneath(backup_dir: Path, name: str) -> bytes:
    """The whole file `name` of the backup directory, opened without following a link."""
    with open_dir(backup_dir) as dfd:
        fd = open_read_beneath(dfd, name, what="file")
        with os.fdopen(fd, "rb") as f:
            return f.read()



def _verify_files(backup_dir: Path, manifest: LogicalManifest, events: Events) -> str | None:
    total = manifest.size_bytes
    done = 0
    with open_dir(backup_dir) as dfd:
        for o in manifest.objects:
            try:
                size, digest = hash_beneath(dfd, o.path)
            except FileNotFoundError:
                return f"{o.path} is missing from {backup_dir}"
            except UnsafePath as e:
                return f"{o.path} in {backup_dir} cannot be checked: {e}"
            if (size, digest) != (o.size, o.sha256):
                return f"{o.path} in {backup_dir} does not match its sha256 in the manifest"
            done += size
            events.progress(done, total, "bytes", "checking the backup's sha256")
    return None


def _sql_file(backup_dir: Path, manifest: LogicalManifest, name: str, *, verify: bool) -> str:
    """A SQL file of the backup that runs as superuser: read once, checked against its sha256 in the manifest
    (when verifying), and these very bytes are what runs: a swap after the check changes nothing."""
    data = _read_beneath(backup_dir, name)
    if verify:
        entry = next((o for o in manifest.objects if o.path == name), None)
        if entry is None or (len(data), sha256_bytes(data)) != (entry.size, entry.sha256):
            raise RunbookError(f"{name} in {backup_dir} does not match its sha256 in the manifest; nothing of it "
                               "was run")
    return data.decode()


def _sealed_settings(backup_dir: Path, manifest: LogicalManifest) -> DatabaseFacts:
    """The database facts with their settings: from the manifest, or (a backup from an encrypted repository)
    from the object `database.settings_path`, which fetch-latest-backup decrypted (the stored sha256, age's
    authentication and the plaintext sha256 checked on the way): read once, its sha256 checked again, and those
    very bytes used. Raises RunbookError naming the file."""
    facts = manifest.database
    name = facts.settings_path
    if name is None:
        return facts
    try:
        data = _read_beneath(backup_dir, name)
    except (OSError, UnsafePath) as e:
        raise RunbookError(f"{name} (the database's settings) cannot be read in {backup_dir}: "
                           f"{getattr(e, 'strerror', None) or e}; nothing was restored",
                           hint="fetch the backup again with fetch-latest-backup (it decrypts every object)") from None
    entry = next((o for o in manifest.objects if o.path == name), None)
    if entry is None or (len(data), sha256_bytes(data)) != (entry.size, entry.sha256):
        raise RunbookError(f"{name} in {backup_dir} does not match its sha256 in the manifest; nothing was restored",
                           hint="fetch the backup again with fetch-latest-backup")
    try:
        settings = parse_settings(data)
    except ValueError as e:
        raise RunbookError(f"{name} in {backup_dir} is not a list of settings ({invalid_reason(e)}); nothing was "
                           "restored") from None
    return facts.model_copy(update={"settings": settings, "settings_path": None})


def _pg_restore(argv: list[str], env: dict[str, str], data_items: int, events: Events) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    tail: list[str] = []
    done = 0
    for line in proc.stderr:
        line = line.rstrip("\n")
        print(line, flush=True)
        tail = (tail + [line])[-20:]
        if "processing data for table" in line or re.search(r"(launching|processing) item \d+ (TABLE DATA|BLOBS)", line):
            done += 1
            events.progress(min(done, data_items), data_items, "tables", "restoring table data")
    code = proc.wait()
    if code != 0:
        raise ToolFailed("pg_restore", code, "\n".join(tail))


def main(args: Args, events: Events) -> int:
    import psycopg

    t_start = time.monotonic()
    backup_dir = Path(args.backup_dir)
    try:
        manifest_bytes = _read_beneath(backup_dir, layout.MANIFEST)
    except (OSError, UnsafePath) as e:
        print(f"{backup_dir} is not a fetched backup (no readable manifest.json, links are not followed): "
              f"{getattr(e, 'strerror', None) or e}")
        return 2
    try:
        manifest = parse_logical(manifest_bytes)
    except ValueError as e:
        print(f"{backup_dir} holds an unusable manifest.json: {invalid_reason(e)}; nothing was restored")
        events.check("manifest", "failed", invalid_reason(e))
        return 2
    if not private_enough(os.stat(backup_dir, follow_symlinks=False)):
        msg = (f"{backup_dir} may be written by another user: its files could change after they are checked "
               "(fetch-latest-backup makes a private directory)")
        print(f"warning: {msg}")
        events.check("backup directory", "warning", msg)
    dump_dir = backup_dir / manifest.dump.path
    for note in manifest.notes:
        print(f"note: the backup says: {note}")
        events.check("what the backup carries", "warning", note)
    if args.verify:
        t0 = time.monotonic()
        paths = [o.path for o in manifest.objects]
        stamp = checked_unchanged(backup_dir, sha256_bytes(manifest_bytes), paths)
        if stamp is not None:
            by, at = stamp
            note = f"{len(paths)} files checked against their sha256 by {by} at {at}, unchanged since"
            print(f"{note}: not hashed again")
        else:
            problem = _verify_files(backup_dir, manifest, events)
            if problem:
                events.check("backup files", "failed", problem)
                print(f"{problem}; nothing was restored")
                return 1
            note = f"{len(paths)} files match their sha256 ({time.monotonic() - t0:.1f} s)"
        events.check("backup files", "ok", note)

    try:
        facts = _sealed_settings(backup_dir, manifest)
    except RunbookError as e:
        events.check("database settings", "failed", str(e))
        print(str(e))
        return 1

    conn = Conn(args.host, args.port, args.user)
    target = conn.describe(args.db)
    try:
        pg = connect(conn, args.maintenance_db, autocommit=True, application_name="runbook restore-logical")
    except RunbookError as e:
        print(str(e))
        events.check("target server", "failed", str(e))
        return 1
    timings: dict[str, float] = {}
    try:
        exists = _exists(pg, args.db)
        if exists:
            with connect(conn, args.db, autocommit=True) as tpg, tpg.cursor() as cur:
                cur.execute(_NOT_EMPTY)
                n = int(cur.fetchone()[0])
            if n:
                msg = (f"database {args.db} exists on {target} and is not empty ({n} objects): nothing was restored. "
                       "Check what it is, drop it deliberately, or restore under another name")
                events.check("target database is new or empty", "failed", msg)
                print(msg)
                return 1
            print(f"database {args.db} exists and is empty: restoring into it")
        if args.globals and manifest.globals.path:
            t0 = time.monotonic()
            report = _restore_globals(pg, _sql_file(backup_dir, manifest, manifest.globals.path, verify=args.verify),
                                      manifest)
            timings["globals_s"] = time.monotonic() - t0
            events.check("roles", "ok", f"{len(report.created)} created, {len(report.existing)} existed")
        use_create = not exists and args.db == facts.name
        notes: list[str] = []
        if not use_create:
            notes = create_like(pg, args.db, facts, create=not exists)
            for note in notes:
                print(f"note: {note}")
            print(f"{'created' if not exists else 'prepared'} database {args.db} ({facts.encoding}, "
                  f"collate {facts.collation}, ctype {facts.ctype}), with {len(facts.settings)} settings and its ACL")
    except psycopg.Error as e:
        msg = f"preparing {target} failed: {str(e).strip()}"
        events.check("prepare target", "failed", msg)
        print(msg)
        return 1
    except (RunbookError, OSError) as e:
        msg = str(e) if isinstance(e, RunbookError) else f"reading the backup failed: {e.strerror or e}"
        events.check("prepare target", "failed", msg)
        print(msg)
        return 1
    finally:
        pg.close()

    from steps.backup.archive_check import toc_entries

    data_items = sum(1 for e in toc_entries(dump_dir) if " TABLE DATA " in e or " BLOBS " in e) or 1
    argv = [tool("pg_restore"), *conn.args(), f"--jobs={args.jobs}", "--exit-on-error", "--verbose"]
    argv += ["--create", dbname_option(args.maintenance_db)] if use_create else [dbname_option(args.db)]
    argv.append(str(dump_dir))
    options = f"-c maintenance_work_mem={args.maintenance_work_mem}"
    if not args.synchronous_commit:
        options += " -c synchronous_commit=off"
    env = {**os.environ, "PGOPTIONS": f"{os.environ.get('PGOPTIONS', '')} {options}".strip()}
    print(("restoring with --create (database-level settings and privileges come from the dump): " if use_create
           else "restoring: ") + " ".join(argv), flush=True)
    t0 = time.monotonic()
    witness = None
    try:
        if not args.synchronous_commit:
            witness = _Witness(conn, args.maintenance_db)
        _pg_restore(argv, env, data_items, events)
        if witness is not None:
            witness.durable()
    except (ToolFailed, RunbookError) as e:
        timings["restore_s"] = time.monotonic() - t0
        msg = (f"{e}\nthe database {args.db} on {target} is half-restored: drop it (after checking) before retrying")
        events.check("pg_restore", "failed", msg)
        print(msg)
        return 1
    finally:
        if witness is not None:
            witness.close()
    timings["restore_s"] = time.monotonic() - t0
    events.check("pg_restore", "ok", f"{data_items} data entries in {timings['restore_s']:.1f} s")

    if manifest.user_mappings:
        try:
            mappings = _sql_file(backup_dir, manifest, manifest.user_mappings, verify=args.verify)
            problem = _restore_user_mappings(conn, args.db, mappings)
        except (RunbookError, OSError) as e:
            problem = str(e) if isinstance(e, RunbookError) else f"reading it failed: {e.strerror or e}"
        if problem:
            msg = (f"the database {args.db} is restored, but its user mappings' options are not: {problem}; "
                   f"set them by hand from {backup_dir / manifest.user_mappings}")
            events.check("user mapping options", "failed", msg)
            print(msg)
            return 1

    if args.analyze:
        t1 = time.monotonic()
        proc = subprocess.run([tool("vacuumdb"), *conn.args(), "--analyze-only", f"--jobs={args.jobs}",
                               dbname_option(args.db)], capture_output=True, text=True)
        timings["analyze_s"] = time.monotonic() - t1
        if proc.returncode != 0:
            events.check("ANALYZE", "warning", proc.stderr.strip())
            print(f"ANALYZE failed (the data is restored; run it by hand): {proc.stderr.strip()}")
        else:
            events.check("ANALYZE", "ok", f"{timings['analyze_s']:.1f} s")
    duration = time.monotonic() - t_start
    print(f"restored {facts.name} backup {manifest.backup_id} into {target} in {duration:.1f} s ("
          + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in timings.items()) + ")")
    events.output("restored_db", args.db)
    events.output("duration_s", round(duration, 1))
    events.output("restore_s", round(timings["restore_s"], 1))
    events.output("analyze_s", round(timings.get("analyze_s", 0.0), 1))
    return 0


class _Witness:
    """The durability of a restore whose sessions commit without waiting for their WAL flush (synchronous_commit
    off: a crash could lose the last commits). A connection is opened before pg_restore starts and kept idle; after
    pg_restore, one synchronous commit on it (a transaction id assigned, so a commit record is written) waits for
    the WAL to be flushed up to that record, hence for every commit before it: the WAL is one sequence, flushed in
    order. That connection surviving is also the proof that the server did not crash and restart meanwhile (crash
    recovery ends every session): had it, async commits could be lost while pg_restore, reconnecting or not, said
    nothing, so the restore is then reported failed."""

    def __init__(self, conn: Conn, dbname: str) -> None:
        import psycopg

        try:
            self.pg = connect(conn, dbname, autocommit=True, application_name="runbook restore-logical durability")
            # idle for the whole restore: no idle timeout ends it, and over TCP the server's keepalives keep
            # firewalls and NAT from forgetting it (ignored on a Unix socket)
            self.pg.execute("set idle_session_timeout = 0")
            self.pg.execute("set tcp_keepalives_idle = 60")
            self.pg.execute("set tcp_keepalives_interval = 10")
        except psycopg.Error as e:
            raise RunbookError(f"cannot open the connection that makes the restore durable: {str(e).strip()}") from None

    def durable(self) -> None:
        import psycopg

        try:
            with self.pg.transaction():
                self.pg.execute("set local synchronous_commit = on")
                self.pg.execute("select pg_current_xact_id()")
        except psycopg.Error as e:
            raise RunbookError(
                "pg_restore finished, but the connection opened before it to make its commits durable was lost "
                f"({str(e).strip() or type(e).__name__}): the server may have crashed and restarted during the "
                "restore, losing its last commits (pg_restore's sessions do not wait for the WAL flush, "
                "synchronous_commit off)") from None

    def close(self) -> None:
        self.pg.close()


def _restore_user_mappings(conn: Conn, db: str, text: str) -> str | None:
    """The options pg_dump could not see (the backup kept them: steps.backup.dump). Returns what went wrong, if anything."""
    import psycopg

    from steps.backup.globals_sql import split_statements

    statements = split_statements(text)
    try:
        with connect(conn, db, autocommit=True, application_name="runbook restore-logical") as pg, pg.transaction():
            for stmt in statements:
                pg.execute(stmt)
    except psycopg.Error as e:
        # The server's primary message and code only: its context lines would quote the statement, passwords too.
        return f"{e.diag.message_primary or type(e).__name__} (SQLSTATE {e.sqlstate or '?'})"
    except RunbookError as e:
        return str(e).strip()
    # Never echo the statements: they carry passwords.
    print(f"user mappings' options restored: {len(statements)} mappings (pg_dump cannot dump them as a non-superuser)")
    return None


def _restore_globals(pg: Any, text: str, manifest: LogicalManifest) -> Any:
    from steps.backup.globals_sql import apply_globals

    report = apply_globals(pg, text)
    if report.created:
        print(f"roles created: {', '.join(report.created)}")
    if report.existing:
        print(f"roles that exist already, kept as they are: {', '.join(report.existing)}")
    for note in report.notes:
        print(f"note: {note}")
    if not manifest.globals.role_passwords and report.created:
        print("note: the backup was taken without role passwords: set them (ALTER ROLE ... PASSWORD) "
              "before the application connects")
    return report
