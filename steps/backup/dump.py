"""Taking one logical dump into a staging directory: snapshot, pg_dump, exact row counts, globals.

A REPEATABLE READ, READ ONLY transaction exports its snapshot (`pg_export_snapshot()`) and stays open
while `pg_dump --snapshot` runs, so the dump, the database facts and the per-table row counts all see
the same data; the counts are taken in that transaction while pg_dump works (steps.pg.rows: each table's
own rows; what is not counted, a foreign table for one, is recorded with the reason). The snapshot time (the
recovery point) is `statement_timestamp()` of the exporting statement: everything committed before it
is in the dump. `pg_dumpall --globals-only` goes beside the dump (roles are not in a per-database dump),
with role passwords when the role may read `pg_authid` (pg_read_all_data may), else without, and the
manifest says which. Nothing here touches a repository itself (the caller's pipeline, given, gets each file as
pg_dump finishes it: steps.backup.pipeline); on any failure the caller drops the staging dir.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runbook.errors import RunbookError
from steps.pg import rows
from steps.pg.tools import Conn, ToolFailed, connect, tool, version
from steps.repository import layout
from steps.repository.manifest import (
    AclEntry,
    DatabaseFacts,
    DatabaseSetting,
    DumpInfo,
    GlobalsInfo,
    ObjectEntry,
)
from steps.repository.store import sha256_file

if TYPE_CHECKING:
    from steps.backup.pipeline import DumpPipeline

log = logging.getLogger("runbook.backup")

_FACTS = """
select (select system_identifier::text from pg_control_system()),
       current_setting('server_version'), current_setting('server_version_num')::int,
       pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, d.datlocprovider::text, d.daticulocale,
       pg_get_userbyid(d.datdba), pg_database_size(d.oid), d.datconnlimit,
       case when d.datacl is null then null else coalesce((
         select json_agg(json_build_object(
                  'grantee', case when a.grantee = 0 then '' else pg_get_userbyid(a.grantee) end,
                  'privilege', a.privilege_type, 'grantable', a.is_grantable))
         from aclexplode(d.datacl) a), '[]') end,
       has_table_privilege('pg_catalog.pg_authid', 'SELECT')
from pg_database d where d.datname = current_database()
"""

_SETTINGS = """
select r.rolname, unnest(s.setconfig)
from pg_db_role_setting s left join pg_roles r on r.oid = s.setrole
where s.setdatabase = (select oid from pg_database where datname = current_database())
order by r.rolname nulls first
"""

# User mapping options pg_dump cannot see: it reads the pg_user_mappings view, which shows a mapping's options
# only to a superuser, the server's owner or the mapped user itself; pg_read_all_data reads the catalog.
_USER_MAPPINGS = """
select format('ALTER USER MAPPING FOR %s SERVER %I OPTIONS (%s);',
              case when m.umuser = 0 then 'PUBLIC' else quote_ident(pg_get_userbyid(m.umuser)) end, s.srvname,
              (select string_agg(format('ADD %I %L', o.option_name, o.option_value), ', ')
               from pg_options_to_table(m.umoptions) o))
from pg_catalog.pg_user_mapping m join pg_foreign_server s on s.oid = m.umserver
join pg_user_mappings v on v.umid = m.oid
where m.umoptions is not null and v.umoptions is null
order by s.srvname, m.umuser = 0, pg_get_userbyid(m.umuser)
"""

# pg_dump dumps subscriptions only as a superuser (it says "subscriptions not dumped" and goes on).
_SUBSCRIPTIONS = """
select s.subname from pg_subscription s
where s.subdbid = (select oid from pg_database where datname = current_database())
  and not (select rolsuper from pg_roles where rolname = current_user)
order by 1
"""

USER_MAPPINGS = "user_mappings.sql"


@dataclass
class DumpResult:
    staging: Path
    facts: DatabaseFacts
    snapshot_time: datetime
    started_at: datetime
    stopped_at: datetime
    row_counts: dict[str, int]  # steps.pg.rows: each table's own rows
    objects: list[ObjectEntry]
    dump: DumpInfo
    globals: GlobalsInfo
    timings: dict[str, float]
    user_mappings: str | None = None
    notes: list[str] = field(default_factory=list)
    row_counts_skipped: dict[str, str] = field(default_factory=dict)  # not counted, with the reason

    @property
    def size_bytes(self) -> int:
        return sum(o.size for o in self.objects)


def _now() -> datetime:
    return datetime.now(UTC)


def _dump_hint(stderr: str) -> str | None:
    if "permission denied for large object" in stderr:
        return ("pg_read_all_data does not cover large objects in PostgreSQL 15: GRANT SELECT ON LARGE OBJECT "
                "... TO the backup role, or make it the objects' owner (or set lo_compat_privileges)")
    if "row-level security" in stderr:
        return "a table has row-level security: give the backup role BYPASSRLS (ALTER ROLE ... BYPASSRLS)"
    if "permission denied" in stderr:
        return "the backup role needs pg_read_all_data (GRANT pg_read_all_data TO <role>)"
    if "No space left on device" in stderr:
        return "the staging directory's disk is full: free space or set backup.staging_dir"
    if "server version mismatch" in stderr:
        return "pg_dump must be of the server's major version or newer"
    return None


def take_dump(conn: Conn, db: str, staging: Path, *, jobs: int, compression: int,
              pipeline: DumpPipeline | None = None) -> DumpResult:
    """Dump `db` into `staging` (dump/ and globals.sql). Raises RunbookError; leaves cleanup to the caller.

    With a `pipeline` (steps.backup.pipeline), each file is handed to it as soon as pg_dump has finished it
    (hashed, published, read-checked while the dump goes on); without, the files are hashed at the end."""
    import psycopg

    started_at = _now()
    timings: dict[str, float] = {}
    staging.mkdir(parents=True, exist_ok=False, mode=0o700)
    pg = connect(conn, db, application_name="runbook backup")
    proc: subprocess.Popen[str] | None = None
    try:
        pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        pg.read_only = True
        with pg.cursor() as cur:
            cur.execute("select pg_export_snapshot(), statement_timestamp()")
            snapshot_id, snapshot_time = cur.fetchone()
            cur.execute(_FACTS)
            row = cur.fetchone()
            cur.execute(_SETTINGS)
            settings = [DatabaseSetting(role=r, setting=s) for r, s in cur.fetchall()]
            cur.execute("select has_table_privilege('pg_catalog.pg_user_mapping', 'SELECT'), "
                        "(select count(*) from pg_user_mappings where umoptions is null)")
            can_read_mappings, unseen_mappings = cur.fetchone()
            mappings: list[str] = []
            if can_read_mappings:
                cur.execute(_USER_MAPPINGS)
                mappings = [r[0] for r in cur.fetchall()]
            cur.execute(_SUBSCRIPTIONS)
            subscriptions = [r[0] for r in cur.fetchall()]
        (sysid, server_version, version_num, encoding, collate, ctype, provider, icu, owner, size, connlimit,
         acl, can_read_authid) = row
        facts = DatabaseFacts(
            name=db, system_identifier=str(sysid), server_version=server_version, server_version_num=version_num,
            encoding=encoding, collation=collate, ctype=ctype, locale_provider="icu" if provider == "i" else "libc",
            icu_locale=icu, owner=owner, size_bytes=int(size), connection_limit=int(connlimit),
            acl=None if acl is None else [AclEntry.model_validate(a) for a in acl],
            settings=settings,
        )
        log.info("snapshot %s of %s at %s (server %s, system identifier %s)", snapshot_id, db,
                 snapshot_time.isoformat(), server_version, sysid)

        t0 = time.monotonic()
        argv = [tool("pg_dump"), *conn.args(), "--format=directory", f"--jobs={jobs}", f"--compress={compression}",
                f"--snapshot={snapshot_id}", "--no-sync", f"--file={staging / layout.DUMP_DIR}"]
        if pipeline is not None:
            pipeline.begin(str(sysid))
        log.info("running %s", " ".join(argv))
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PGDATABASE": db})
        if pipeline is not None:
            pipeline.watch(proc.pid)
        counts = rows.count_rows(pg)
        timings["count_rows_s"] = time.monotonic() - t0
        _, stderr = proc.communicate()
        timings["pg_dump_s"] = time.monotonic() - t0
        if proc.returncode != 0:
            raise ToolFailed("pg_dump", proc.returncode, stderr, _dump_hint(stderr))
        proc = None
        if pipeline is not None:
            t_end = time.monotonic()
            pipeline.dump_ended()
            timings["hash_rest_s"] = time.monotonic() - t_end
        notes = _notes(stderr, subscriptions)
        if not can_read_mappings and unseen_mappings:
            notes.append(f"{unseen_mappings} user mappings' options may not be in the backup: pg_dump sees them only "
                         "as a superuser, and this role cannot read pg_user_mapping (GRANT pg_read_all_data TO it)")

        user_mappings = None
        if mappings:
            user_mappings = USER_MAPPINGS
            # remote passwords inside: readable by the backup's owner only, whatever the umask
            fd = os.open(staging / USER_MAPPINGS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("".join(m + "\n" for m in mappings))
            log.info("%d user mappings' options kept in %s (pg_dump cannot read them as a non-superuser)",
                     len(mappings), USER_MAPPINGS)
            if pipeline is not None:
                pipeline.add(USER_MAPPINGS)

        t1 = time.monotonic()
        globals_argv = [tool("pg_dumpall"), *conn.args(), "--globals-only", f"--file={staging / layout.GLOBALS}"]
        if not can_read_authid:
            globals_argv.append("--no-role-passwords")
            log.info("the role cannot read pg_authid: globals are dumped without role passwords")
        out = subprocess.run(globals_argv, capture_output=True, text=True, env={**os.environ, "PGDATABASE": db})
        if out.returncode != 0:
            raise ToolFailed("pg_dumpall", out.returncode, out.stderr, _dump_hint(out.stderr))
        notes += _notes(out.stderr, [])
        if pipeline is not None:
            pipeline.add(layout.GLOBALS)
        timings["globals_s"] = time.monotonic() - t1
        pg.rollback()  # read only: nothing to commit; ends the snapshot
    except psycopg.Error as e:
        raise RunbookError(f"backup of {db} failed in its snapshot transaction: {str(e).strip()}",
                           hint=_dump_hint(str(e))) from None
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        pg.close()
    stopped_at = _now()

    t2 = time.monotonic()
    objects = hash_tree(staging) if pipeline is None else pipeline.objects()
    timings["hash_s" if pipeline is None else "publish_after_dump_s"] = time.monotonic() - t2
    return DumpResult(
        staging=staging, facts=facts, snapshot_time=snapshot_time, started_at=started_at, stopped_at=stopped_at,
        row_counts=counts.counts, row_counts_skipped=counts.skipped, objects=objects,
        dump=DumpInfo(format="directory", path=layout.DUMP_DIR, compression=compression, jobs=jobs,
                      pg_dump_version=version("pg_dump")),
        globals=GlobalsInfo(path=layout.GLOBALS, role_passwords=bool(can_read_authid)),
        timings=timings, user_mappings=user_mappings, notes=notes,
    )


def _notes(stderr: str, subscriptions: list[str]) -> list[str]:
    """What the dump does not carry: the subscriptions (said with their names and what to do), and any other
    warning pg_dump or pg_dumpall printed on success (never dropped with their stderr)."""
    notes: list[str] = []
    if subscriptions:
        notes.append(f"subscriptions not in the backup: {', '.join(subscriptions)} (pg_dump dumps subscriptions "
                     "only as a superuser); after a restore re-create them with CREATE SUBSCRIPTION ... "
                     "WITH (connect = false), or run the backup as a superuser")
    for line in stderr.splitlines():
        m = re.match(r"^(pg_dump|pg_dumpall): warning: (.*)$", line.strip())
        if m and not (subscriptions and "subscriptions not dumped" in m.group(2)):
            notes.append(f"{m.group(1)} warned: {m.group(2)}")
    return notes


def hash_tree(root: Path) -> list[ObjectEntry]:
    """Every file under `root` with its size and sha256, paths relative to root with /, sorted."""
    out: list[ObjectEntry] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            size, digest = sha256_file(path)
            out.append(ObjectEntry(path=path.relative_to(root).as_posix(), size=size, sha256=digest))
    return sorted(out, key=lambda o: o.path)
