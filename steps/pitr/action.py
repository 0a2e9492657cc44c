"""pitr: point-in-time recovery from a base backup plus archived WAL, into a new data directory.

1. The target: a time (ISO 8601 **with** a zone; one without is refused), an xid, an LSN, a restore point
   name, or `latest`. The base backup is the newest `readable` one that **ended before** the target (its
   stop time < the target time; for an LSN, its stop LSN <= the target); none: "target before the backup
   ends", with the oldest backup's end, and what to do.
2. The data directory must not exist or be empty (a half-restored one is refused); it is created 0700 and
   owned by the server's user. With `debian_cluster`, a new cluster is made with `pg_createcluster` first
   (configuration in /etc/postgresql/15/NAME) and its fresh, empty data directory is replaced; an existing
   data directory is never deleted.
3. The backup's objects are fetched (sha256 checked as they stream) and its tars are extracted while every
   file is checked against the server's backup_manifest; `pg_wal` is left empty. Each tablespace's
   `<oid>.tar` goes into a new directory (`tablespaces` mapping by OID, original location or name; else
   `<tablespace_dir or <pgdata>_tablespaces>/<oid>`), never its production one, and `tablespace_map` is
   rewritten to point there; after promotion each tablespace is checked to be there.
4. `recovery.signal`; in postgresql.auto.conf: `restore_command` (`runbook wal-fetch`, with the absolute
   path of an executable the server's user can run), `recovery_target_*`, `recovery_target_action =
   'promote'`, and `archive_mode = off` (or archiving to a separate directory): the restored copy keeps the
   production system identifier and must never write into the production archive.
5. The server is started with `pg_ctl -w` as the server's user (or `pg_ctlcluster`), then the real end of
   recovery is waited for: `pg_is_in_recovery()` polled until false, the postmaster checked alive, its log
   scanned for FATAL/PANIC. "recovery ended before configured recovery target was reached" means the target
   is beyond the archived WAL: a clear error, with what to do.
6. Reported: the new timeline, the recovery point (the last replayed transaction's time, from the log line
   "last completed transaction was at log time ...", else `pg_last_xact_replay_timestamp()`), the replay
   time and the LSN where redo ended. The recovery settings are then removed (ALTER SYSTEM RESET).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runbook.errors import RunbookError
from runbook.lock import pid_alive
from steps.events import Events

TargetKind = Literal["time", "xid", "lsn", "name", "latest"]
LAST_XACT_RE = re.compile(r"last completed transaction was at log time (.+?)\s*$", re.M)
REDO_DONE_RE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
NOT_REACHED = "recovery ended before configured recovery target was reached"
# FATALs that end a client's connection, not the recovery (our own polling while the server starts, others)
CLIENT_FATALS = ("the database system is", "role \"", "database \"", "password authentication failed",
                 "no pg_hba.conf entry", "Peer authentication failed", "terminating connection due to")
RECOVERY_SETTINGS = ["restore_command", "recovery_target_time", "recovery_target_xid", "recovery_target_lsn",
                     "recovery_target_name", "recovery_target", "recovery_target_inclusive",
                     "recovery_target_action", "recovery_target_timeline"]


class PitrError(RunbookError):
    title = "pitr"


def default_runbook_exe() -> str:
    """The `runbook` next to this interpreter (the venv's), which the server's user must be able to run."""
    return str(Path(sys.executable).parent / "runbook")


def parse_target_time(text: str) -> datetime:
    """ISO 8601 with a zone. A time without one is refused: the server would read it in *its* zone."""
    try:
        dt = datetime.fromisoformat(text.strip().replace(" ", "T", 1) if "T" not in text else text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-25T03:10:00+07:00)") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"the target time {text!r} has no time zone: add one (Z, +07:00) so that it means one "
                         "moment, whatever the server's TimeZone")
    return dt


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(min_length=1, description="The repository config (local and/or S3) to recover from")
    target_kind: TargetKind = Field("time", description="time | xid | lsn | name | latest")
    target: str = Field("", description="The target: an ISO 8601 time with zone, an xid, an LSN, a restore point")
    target_time: str = Field("", description="The time target (kind time), when `target` is not given: so that a "
                             "runbook can pass its target_time parameter and a separate target for other kinds")
    inclusive: bool = Field(True, description="Stop just after the target (true) or just before it (false)")
    pgdata: str = Field(min_length=1, description="New data directory: must not exist or be empty")
    port: int = Field(5432, ge=1, le=65535, description="Port of the restored server")
    socket_dir: str | None = Field(None, description="Unix socket directory of the restored server "
                                   "(default: /var/run/postgresql when it exists, else the data directory's parent)")
    listen_addresses: str = Field("", description="listen_addresses of the restored server ('' = socket only)")
    runbook_exe: str | None = Field(None, description="Absolute path of `runbook` that the server's user can "
                                    "run, for restore_command (default: the one beside this Python)")
    restore_command: str | None = Field(None, description="Override the restore_command (%f %p) entirely")
    archive_to: str | None = Field(None, description="Archive the restored copy's WAL into this directory "
                                   "(never the production archive); default: archiving off")
    source: Literal["any", "local", "s3"] = Field("any", description="Where to fetch the base backup from")
    backup_id: str | None = Field(None, description="Use this base backup rather than picking one")
    cluster: str | None = Field(None, description="System identifier, when the repository holds several clusters")
    debian_cluster: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                                       description="Restore into a new Debian cluster of this name (pg_createcluster)")
    pg_version: str = Field("15", description="Debian clusters: the major version")
    user: str = Field("postgres", description="Superuser role of the restored cluster, to watch the recovery")
    timeout_s: float = Field(4 * 3600, gt=0, description="Give up waiting for the end of recovery after this")
    fetch_dir: str | None = Field(None, description="Where the backup is fetched (default: a temp dir beside pgdata)")
    tablespaces: dict[str, str] = Field(default_factory=dict, description="Where tablespaces go: {OID, name or "
                                        "original location: absolute directory, missing or empty}; also "
                                        "'KEY=DIR, KEY=DIR' as text")
    tablespace_dir: str | None = Field(None, description="Tablespaces not in `tablespaces` go to DIR/<oid> "
                                       "(default: <pgdata>_tablespaces/<oid>)")

    @model_validator(mode="before")
    @classmethod
    def _empty_is_none(cls, data: Any) -> Any:
        if isinstance(data, dict):  # a runbook passes '' for "not set"
            for key in ("debian_cluster", "runbook_exe", "restore_command", "archive_to", "backup_id", "cluster",
                        "socket_dir", "fetch_dir", "tablespace_dir"):
                if data.get(key) == "":
                    data = {**data, key: None}
            if isinstance(data.get("tablespaces"), str) and "{{" not in data["tablespaces"]:  # a template: later
                data = {**data, "tablespaces": parse_tablespace_mapping(data["tablespaces"])}
            elif data.get("tablespaces") is None and "tablespaces" in data:
                data = {**data, "tablespaces": {}}
        return data

    @model_validator(mode="after")
    def _target(self) -> Args:
        if self.target_kind == "time" and not self.target.strip():
            self.target = self.target_time
        if not Path(self.pgdata).is_absolute():
            raise ValueError(f"pgdata must be an absolute path, not {self.pgdata!r}")
        for key, directory in self.tablespaces.items():
            if not key.strip():
                raise ValueError("tablespaces: an empty key (use the tablespace's OID, name or original location)")
            if not os.path.isabs(directory):
                raise ValueError(f"tablespaces: the directory for {key!r} must be an absolute path, not {directory!r}")
        if self.tablespace_dir is not None and not os.path.isabs(self.tablespace_dir):
            raise ValueError(f"tablespace_dir must be an absolute path, not {self.tablespace_dir!r}")
        if self.target_kind == "latest":
            return self
        if not self.target.strip():
            raise ValueError(f"target_kind {self.target_kind} needs a target")
        if self.target_kind == "time":
            parse_target_time(self.target)
        elif self.target_kind == "xid" and not self.target.strip().isdigit():
            raise ValueError(f"an xid is a number, not {self.target!r}")
        elif self.target_kind == "lsn":
            from steps.pg.walnames import parse_lsn

            parse_lsn(self.target)
        return self


def parse_tablespace_mapping(text: str) -> dict[str, str]:
    """'KEY=DIR, KEY=DIR' (commas or newlines) as a dict; a directory with a comma needs the dict form."""
    out: dict[str, str] = {}
    for item in re.split(r"[,\n]", text):
        if not item.strip():
            continue
        key, sep, directory = item.partition("=")
        if not sep or not key.strip() or not directory.strip():
            raise ValueError(f"tablespaces: {item.strip()!r} is not KEY=DIRECTORY (KEY: an OID, a name or the "
                             "original location)")
        out[key.strip()] = directory.strip()
    return out


# --- picking the base backup ---------------------------------------------------------------------------


def choose_backup(entries: list[Any], args: Args) -> Any:
    """The base backup to start from, or a PitrError that says why none fits."""
    from steps.pg.walnames import parse_lsn
    from steps.repository.catalogue import pick_base, usable_copies

    pool = [e for e in entries if args.cluster is None or e.cluster == args.cluster]
    usable = [e for e in pool if usable_copies(e, source=args.source)]
    if not usable:
        where = "" if args.source == "any" else f" in {args.source}"
        raise PitrError(f"no readable base backup{where} in the repository" +
                        (f" for cluster {args.cluster}" if args.cluster else ""),
                        hint="take one with `runbook basebackup`; without a base backup only a logical restore "
                             "(scenario 1) is possible")
    if args.backup_id:
        chosen = next((e for e in usable if e.backup_id == args.backup_id), None)
        if chosen is None:
            raise PitrError(f"no readable base backup {args.backup_id}", hint="`runbook backups` lists them")
        return chosen
    if args.target_kind == "time":
        when = parse_target_time(args.target)
        chosen = pick_base(usable, before=when, source=args.source)
        if chosen is None:
            oldest = min(usable, key=lambda e: e.time)
            raise PitrError(
                f"target before the backup ends: the target {when.isoformat()} is before the end of the oldest "
                f"base backup ({oldest.backup_id}, ended {oldest.time.isoformat()}); a base backup can only be "
                "recovered to a moment after it ended",
                hint="choose a later target, or restore an older logical backup (scenario 1)")
        return chosen
    if args.target_kind == "lsn":
        target = parse_lsn(args.target)
        for e in usable:  # newest first
            if parse_lsn(e.manifest.stop_lsn) <= target:
                return e
        oldest = min(usable, key=lambda e: e.time)
        raise PitrError(f"target before the backup ends: LSN {args.target} is before the end of the oldest base "
                        f"backup ({oldest.backup_id}, stop LSN {oldest.manifest.stop_lsn})",
                        hint="choose a later LSN, or restore an older logical backup (scenario 1)")
    return usable[0]  # xid, name, latest: the newest (a target before it fails in recovery, with its message)


# --- the data directory ----------------------------------------------------------------------------------


def _require_new_or_empty(path: Path, prefix: str, why: str, hint: str) -> None:
    """`path` does not exist, or is an empty directory; else a PitrError starting with `prefix`."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise PitrError(f"{prefix}{path} exists and is not a directory")
        if any(path.iterdir()):
            raise PitrError(f"{prefix}{path} is not empty: {why}", hint=hint)


def _check_empty(pgdata: Path) -> None:
    _require_new_or_empty(pgdata, "", "PITR restores only into a new or empty data directory (it never "
                          "overwrites one, and refuses a half-restored one)",
                          "choose a new path, or move that directory aside yourself once you are sure")


def _prepare_bare(pgdata: Path) -> None:
    from steps.pg.server import server_user

    _check_empty(pgdata)
    pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(pgdata, 0o700)
    pw = server_user()
    if pw is not None:
        os.chown(pgdata, pw.pw_uid, pw.pw_gid)
        probe = subprocess.run(["runuser", "-u", pw.pw_name, "--", "test", "-w", str(pgdata)], capture_output=True)
        if probe.returncode != 0:
            raise PitrError(f"the server's user {pw.pw_name} cannot reach {pgdata}",
                            hint="every parent directory must be traversable (x) by that user")


def _precheck_debian(args: Args, pgdata: Path) -> str:
    """Refuses a cluster name or a data directory that exists already; returns pg_createcluster's path."""
    conf = Path("/etc/postgresql") / args.pg_version / str(args.debian_cluster)
    if conf.exists():
        raise PitrError(f"the Debian cluster {args.pg_version}/{args.debian_cluster} exists already ({conf})",
                        hint="choose a new cluster name; an existing cluster is never overwritten")
    _check_empty(pgdata)
    exe = shutil.which("pg_createcluster")
    if exe is None:
        raise PitrError("pg_createcluster is not installed", hint="apt-get install postgresql-common")
    return exe


def _prepare_debian(args: Args, pgdata: Path) -> None:
    """pg_createcluster makes a new cluster (config in /etc/postgresql/V/NAME); its fresh data directory is
    emptied for the base backup. Refuses a name or a data directory that exists already."""
    exe = _precheck_debian(args, pgdata)
    proc = subprocess.run([exe, args.pg_version, str(args.debian_cluster), "-d", str(pgdata), "-p", str(args.port),
                           "--", "--no-sync"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PitrError(f"pg_createcluster failed: {proc.stderr.strip()[-800:]}")
    # The cluster was made a moment ago by us, for this: its initdb output makes way for the backup.
    for child in pgdata.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


# --- tablespaces -----------------------------------------------------------------------------------------
#
# base.tar's tablespace_map names the production directory of each tablespace; the server would make its
# pg_tblspc/<oid> symlink point there at the start of recovery. Each <oid>.tar is extracted into a new
# directory instead (a mapping, else <pgdata>_tablespaces/<oid>) and tablespace_map is rewritten to match.


@dataclass
class TablespacePlan:
    oid: str
    original: str  # its directory in the backup's tablespace_map (production's)
    directory: Path  # where the restored copy's tablespace goes
    key: str | None = None  # the `tablespaces` key that chose the directory (None: the default)


def backup_tablespace_oids(manifest: Any) -> list[str]:
    """The tablespace OIDs of a base backup, from its objects (`<oid>.tar*`)."""
    return sorted({o.path.split(".", 1)[0] for o in manifest.objects
                   if o.path.split(".", 1)[0].isdigit() and ".tar" in o.path}, key=int)


def _norm(path: str | Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def _within(a: Path, b: Path) -> bool:
    """a is b or lies under it (symlinks of existing parts followed)."""
    ra, rb = a.resolve(), b.resolve()
    return ra == rb or ra.is_relative_to(rb) or a == b or a.is_relative_to(b)


def _check_target(directory: Path, pgdata: Path, what: str) -> None:
    if _within(directory, pgdata) or _within(pgdata, directory):
        raise PitrError(f"{what}: {directory} and the data directory {pgdata} lie inside one another",
                        hint="choose a directory outside the new data directory (and not one of its parents)")
    _require_new_or_empty(directory, f"{what}: ", "a restored tablespace goes only into a new or empty directory "
                          "(never over existing files)",
                          "choose a new directory, or move that one aside yourself once you are sure")


def precheck_tablespaces(args: Args, pgdata: Path, oids: list[str]) -> None:
    """Before anything is fetched or created: the mapping's directories, and its OID keys."""
    if args.tablespaces and not oids:
        raise PitrError(f"tablespaces: the base backup has no tablespace, yet a mapping was given "
                        f"({', '.join(args.tablespaces)})", hint="leave `tablespaces` out for this backup")
    for key, directory in args.tablespaces.items():
        if key.isdigit() and key not in oids:
            raise PitrError(f"tablespaces: the base backup has no tablespace with OID {key}",
                            hint=f"its tablespaces' OIDs: {', '.join(oids)}")
        _check_target(_norm(directory), pgdata, f"tablespace {key}")


def plan_tablespaces(tsmap: dict[str, str], oids: list[str], mapping: dict[str, str], default_root: Path,
                     pgdata: Path, names: Any = None) -> list[TablespacePlan]:
    """Each tablespace's new directory: `mapping` keyed by OID, original location or name (`names()`:
    name -> OIDs, read from the backup only when a key is a name), else `default_root/<oid>`. Refused:
    a directory that is (or is inside, or holds) a production tablespace directory or the data directory,
    two tablespaces in one directory, a directory that exists and is not empty."""
    if sorted(tsmap, key=int) != sorted(oids, key=int):
        raise PitrError(f"the base backup is inconsistent: tablespace_map names OIDs {sorted(tsmap, key=int)}, "
                        f"its tars are for {sorted(oids, key=int)}")
    listing = ", ".join(f"{oid} ({tsmap[oid]})" for oid in sorted(tsmap, key=int))
    chosen: dict[str, tuple[str, str]] = {}
    known_names: dict[str, set[str]] | None = None
    for key, directory in mapping.items():
        if key.isdigit():
            oid = key
        elif key.startswith("/"):
            hits = [o for o, loc in tsmap.items() if _norm(loc) == _norm(key)]
            if not hits:
                raise PitrError(f"tablespaces: no tablespace of the base backup was at {key}",
                                hint=f"its tablespaces (OID and original location): {listing}")
            oid = hits[0]
        else:
            if known_names is None:
                known_names = names() if names else {}
            found = sorted((known_names or {}).get(key, set()) & set(tsmap), key=int)
            if not found:
                raise PitrError(f"tablespaces: the base backup has no tablespace named {key!r}",
                                hint=f"use an OID or the original location; its tablespaces: {listing}")
            if len(found) > 1:
                raise PitrError(f"tablespaces: the name {key!r} is ambiguous in the backup's pg_tablespace "
                                f"(OIDs {', '.join(found)})", hint=f"use the OID; its tablespaces: {listing}")
            oid = found[0]
        if oid in chosen:
            raise PitrError(f"tablespaces: {chosen[oid][0]!r} and {key!r} both name tablespace {oid}")
        chosen[oid] = (key, directory)
    plan = [TablespacePlan(oid, tsmap[oid], _norm(chosen[oid][1]) if oid in chosen else _norm(default_root / oid),
                           chosen[oid][0] if oid in chosen else None) for oid in sorted(tsmap, key=int)]
    for p in plan:
        what = f"tablespace {p.oid}" + (f" ({p.key})" if p.key and p.key != p.oid else "")
        for other in tsmap.values():
            if _within(p.directory, _norm(other)) or _within(_norm(other), p.directory):
                raise PitrError(f"{what}: {p.directory} is (or holds, or lies in) the original tablespace "
                                f"directory {other}: a restored copy never writes there (it may be in use, "
                                "or belong to the lost server)", hint="choose a new directory")
        for q in plan:
            if q is not p and (_within(p.directory, q.directory) or _within(q.directory, p.directory)):
                raise PitrError(f"tablespaces {p.oid} and {q.oid} would share {p.directory} / {q.directory}",
                                hint="give each tablespace a directory of its own")
        _check_target(p.directory, pgdata, what)
    return plan


def refuse_later_tablespaces(cfg: Any, sysid: str, backup_id: str, ts_oids: list[str], events: Events) -> None:
    """Refuse before anything is made when the production cluster (the config's `cluster:`, if it answers)
    has a tablespace the base backup lacks whose directory exists on this host: replay re-creates a
    tablespace at its original path, so the restored copy would write into that live directory, over the
    production cluster's own files. Best effort: a cluster that does not answer (the disaster) is noted."""
    import psycopg

    from steps.pg.tools import Conn

    c = cfg.cluster
    conn = Conn(c.host, c.port, c.user)
    dbname = c.databases[0] if c.databases else "postgres"
    where = conn.describe(dbname)
    try:
        with psycopg.connect(**conn.kwargs(dbname), connect_timeout=5,
                             application_name="runbook pitr", autocommit=True) as pg:
            row = pg.execute("select system_identifier from pg_control_system()").fetchone()
            live_sysid = str(row[0]) if row else ""
            rows = pg.execute(TABLESPACES_SQL).fetchall()
    except psycopg.Error as e:
        note = (f"could not ask the cluster at {where} which tablespaces it has ({str(e).strip().splitlines()[0]}): "
                "a tablespace created after the base backup would be re-created at its original path")
        print(f"pitr: note: {note}", flush=True)
        events.check("tablespaces created after the backup", "warning", note)
        return
    if live_sysid != sysid:
        return  # another cluster answers there: nothing to compare
    later = [(str(oid), str(name), str(loc)) for oid, name, loc in rows
             if str(oid) not in ts_oids and loc and os.path.exists(loc)]
    if later:
        names = ", ".join(f"{name} (OID {oid}) at {loc}" for oid, name, loc in later)
        raise PitrError(f"the running cluster has tablespace(s) created after base backup {backup_id}: {names}. "
                        "Replaying their CREATE TABLESPACE would make the restored copy write into those live "
                        "directories on this host, over the running cluster's files; nothing was restored",
                        hint="recover on another host (where those directories do not exist), or from a base "
                             "backup that has the tablespace if the target is after it; take a base backup after "
                             "every CREATE TABLESPACE (`runbook check` warns when one is missing)")
    events.check("tablespaces created after the backup", "ok", f"none on {where}")


def make_tablespace_dirs(plan: list[TablespacePlan]) -> None:
    """Each directory 0700 and owned by the server's user (like the data directory), which must reach it."""
    from steps.pg.server import server_user

    pw = server_user()
    for p in plan:
        made_parent = not p.directory.parent.exists()
        p.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(p.directory, 0o700)
        if pw is not None:
            if made_parent and p.key is None:  # <pgdata>_tablespaces: ours, like the data directory
                os.chown(p.directory.parent, pw.pw_uid, pw.pw_gid)
                os.chmod(p.directory.parent, 0o700)
            os.chown(p.directory, pw.pw_uid, pw.pw_gid)
            probe = subprocess.run(["runuser", "-u", pw.pw_name, "--", "test", "-w", str(p.directory)],
                                   capture_output=True)
            if probe.returncode != 0:
                raise PitrError(f"the server's user {pw.pw_name} cannot reach {p.directory}",
                                hint="every parent directory must be traversable (x) by that user")


def write_tablespace_map(pgdata: Path, plan: list[TablespacePlan]) -> None:
    from steps.backup.basetar import TABLESPACE_MAP, format_tablespace_map

    path = pgdata / TABLESPACE_MAP
    path.write_bytes(format_tablespace_map({p.oid: str(p.directory) for p in plan}))
    os.chmod(path, 0o600)


def read_tablespace_facts(tars: list[tuple[Path, str]]) -> tuple[dict[str, str], Any]:
    """(tablespace_map of the backup, a loader of pg_tablespace's names) from the fetched base tar."""
    from steps.backup.basetar import (
        TABLESPACE_MAP,
        BaseBackupInvalid,
        parse_tablespace_map,
        read_member,
        tablespace_names,
    )

    base = next(p for p, prefix in tars if not prefix)
    data = read_member(base, TABLESPACE_MAP)
    if data is None:
        raise BaseBackupInvalid(f"{base.name} has tablespace tars but no {TABLESPACE_MAP}")

    def names() -> dict[str, set[str]]:
        heap = read_member(base, "global/1213")  # pg_tablespace
        return tablespace_names(heap) if heap else {}

    return parse_tablespace_map(data), names


TABLESPACES_SQL = ("select oid, spcname, pg_tablespace_location(oid) from pg_tablespace "
                   "where spcname not in ('pg_default', 'pg_global') order by oid")


def placed_tablespaces(rows: str, plan: list[TablespacePlan]) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """From the restored server's TABLESPACES_SQL rows: the report, the problems (a tablespace not where
    the plan put it, or one the base backup did not have) and the warnings."""
    by_oid = {p.oid: p for p in plan}
    report: list[dict[str, str]] = []
    problems: list[str] = []
    warnings: list[str] = []
    for line in rows.splitlines():
        if not line.strip():
            continue
        oid, name, location = line.split("|", 2)
        p = by_oid.get(oid)
        if p is None:
            problems.append(f"tablespace {name} (OID {oid}) at {location} is not in the base backup: it was "
                            "created during the replayed WAL, and replay put it at that (production) location")
            continue
        report.append({"oid": oid, "name": name, "location": location, "original": p.original})
        if _norm(location) != p.directory:
            problems.append(f"tablespace {name} (OID {oid}) is at {location}, not at {p.directory}")
        if p.key and not p.key.isdigit() and not p.key.startswith("/") and p.key != name:
            warnings.append(f"tablespace {oid} was mapped by the name {p.key!r} but is named {name!r} after "
                            "recovery (renamed during the replayed WAL)")
    missing = sorted(set(by_oid) - {r["oid"] for r in report}, key=int)
    if missing:
        warnings.append(f"tablespace(s) {', '.join(missing)} of the base backup were dropped during the replayed "
                        "WAL (their restored directories can go)")
    return report, problems, warnings


# --- configuration --------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def restore_command(args: Args, config_path: Path) -> str:
    if args.restore_command:
        return args.restore_command
    exe = args.runbook_exe or default_runbook_exe()
    if not os.path.isabs(exe):
        raise PitrError(f"runbook_exe must be an absolute path, not {exe!r}")
    return f"{shlex.quote(exe)} wal-fetch -c {shlex.quote(str(config_path))} %f %p"


def recovery_settings(args: Args, config_path: Path) -> dict[str, str]:
    s: dict[str, str] = {"restore_command": restore_command(args, config_path),
                         "recovery_target_action": "promote", "recovery_target_timeline": "latest"}
    if args.target_kind == "time":
        s["recovery_target_time"] = parse_target_time(args.target).isoformat(sep=" ")
    elif args.target_kind == "xid":
        s["recovery_target_xid"] = args.target.strip()
    elif args.target_kind == "lsn":
        s["recovery_target_lsn"] = args.target.strip()
    elif args.target_kind == "name":
        s["recovery_target_name"] = args.target
    if args.target_kind != "latest":
        s["recovery_target_inclusive"] = "on" if args.inclusive else "off"
    return s


def server_settings(args: Args, socket_dir: str) -> dict[str, str]:
    # hot_standby: connections during recovery, so that its progress can be watched
    s = {"port": str(args.port), "listen_addresses": args.listen_addresses, "hot_standby": "on"}
    if not args.debian_cluster:
        s["unix_socket_directories"] = socket_dir
    if args.archive_to:
        dest = shlex.quote(args.archive_to)
        s["archive_mode"] = "on"
        s["archive_command"] = f"test ! -f {dest}/%f && cp %p {dest}/%f"
    else:
        s["archive_mode"] = "off"
    return s


def empty_pg_wal(pgdata: Path) -> None:
    """A restored data directory's pg_wal holds nothing but an empty archive_status: the WAL comes from the
    archive, through restore_command."""
    wal = pgdata / "pg_wal"
    if wal.exists():
        for child in wal.iterdir():
            if child.name != "archive_status":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    (wal / "archive_status").mkdir(parents=True, exist_ok=True, mode=0o700)


def write_auto_conf(pgdata: Path, recovery: dict[str, str], server: dict[str, str]) -> None:
    path = pgdata / "postgresql.auto.conf"
    text = path.read_text() if path.exists() else "# Do not edit this file manually!\n"
    if not text.endswith("\n"):
        text += "\n"
    lines = [f"{k} = {_quote(v)}" for k, v in {**server, **recovery}.items()]
    path.write_text(text + "\n".join(lines) + "\n")
    (pgdata / "recovery.signal").write_text("")


# --- the server -----------------------------------------------------------------------------------------


def _psql(pgdata_socket: str, port: int, user: str, sql: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    from steps.pg.server import as_server
    from steps.pg.tools import tool

    return subprocess.run(as_server([tool("psql"), "-h", pgdata_socket, "-p", str(port), "-U", user, "-d", "postgres",
                                     "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]),
                          capture_output=True, text=True, timeout=timeout)


def _alive(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    return pid_alive(pid)


def _log_tail(log: Path, n: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _fatal_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.search(r"\b(FATAL|PANIC):", ln)]


def _start(args: Args, pgdata: Path, log: Path) -> None:
    from steps.pg.server import as_server, server_user
    from steps.pg.tools import PG_BIN

    if args.debian_cluster:
        cmd = ["pg_ctlcluster", args.pg_version, args.debian_cluster, "start"]
    else:
        log.touch()
        pw = server_user()
        if pw is not None:
            os.chown(log, pw.pw_uid, pw.pw_gid)
        # -w returns once the server accepts connections (consistent); the end of recovery is waited below.
        cmd = as_server([os.path.join(PG_BIN, "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-w",
                         "-t", str(int(min(args.timeout_s, 3600))), "start"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        text = _log_tail(log, 30)
        raise _recovery_failed(text, f"the restored server did not start (exit {proc.returncode}): "
                                     f"{(proc.stderr or proc.stdout).strip()[-400:]}")


def _recovery_failed(log_text: str, fallback: str) -> PitrError:
    fatal = _fatal_lines(log_text)
    if any(NOT_REACHED in ln for ln in fatal) or NOT_REACHED in log_text:
        last = LAST_XACT_RE.findall(log_text)
        redo = REDO_DONE_RE.findall(log_text)
        reached = (f"; the archive ends at LSN {redo[-1]}" if redo else "") + \
                  (f", last transaction at {last[-1]}" if last else "")
        return PitrError(
            f"target beyond the archived WAL: recovery ended before the target was reached{reached}",
            hint="choose an earlier target (or 'latest'); if the WAL should be there, check archiving "
                 "(`runbook check`, pg_stat_archiver on the old server) and copy any surviving pg_wal segments "
                 "into the archive. This data directory is left as it is: start again into a new one")
    detail = "\n".join(fatal[-5:]) if fatal else log_text
    return PitrError(f"{fallback}\n{detail}", hint="the server log above says why; the data directory is left "
                     "as it is for inspection: start again into a new one")


def _watch(args: Args, pgdata: Path, log: Path, socket_dir: str, events: Events, start_lsn: int,
           end_lsn: int | None, t0: float) -> tuple[str | None, str | None]:
    """Poll until recovery ended; returns (last replayed xact time from SQL, last replay LSN)."""
    from steps.pg.walnames import format_lsn, parse_lsn

    deadline = time.monotonic() + args.timeout_s
    last_ts: str | None = None
    last_lsn: str | None = None
    sql = ("select pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, ''), "
           "coalesce(pg_last_xact_replay_timestamp()::text, '')")
    next_event = 0.0
    while True:
        if not _alive(pgdata):
            raise _recovery_failed(_log_tail(log, 40), "the restored server stopped during recovery")
        text = log.read_text(errors="replace") if log.exists() else ""
        fatal = [ln for ln in _fatal_lines(text) if not any(b in ln for b in CLIENT_FATALS)]
        if fatal or "PANIC:" in text:
            raise _recovery_failed(text, "the restored server reported a fatal error during recovery")
        proc = _psql(socket_dir, args.port, args.user, sql)
        if proc.returncode == 0 and proc.stdout.strip():
            in_rec, lsn, ts = (proc.stdout.strip().split("|") + ["", ""])[:3]
            last_lsn = lsn or last_lsn
            last_ts = ts or last_ts
            if in_rec == "f":
                return last_ts, last_lsn
            now = time.monotonic()
            if lsn and now >= next_event:
                next_event = now + 2
                done = parse_lsn(lsn) - start_lsn
                total = (end_lsn - start_lsn) if end_lsn and end_lsn > start_lsn else None
                label = f"replayed to {lsn}" + (f" of {format_lsn(end_lsn)}" if end_lsn else "") + \
                        (f", last transaction {ts}" if ts else "") + f", target {args.target_kind} {args.target}".rstrip()
                events.progress(max(done, 0) / 1e6, total / 1e6 if total else None, "MB", label)
                print(f"pitr: {label} ({now - t0:.0f} s)", flush=True)
        if time.monotonic() > deadline:
            raise PitrError(f"recovery did not end within {args.timeout_s:.0f} s; the server is still replaying",
                            hint=f"watch {log}; raise timeout_s for a long replay")
        time.sleep(0.5)


def _finish(args: Args, socket_dir: str) -> tuple[int, str | None]:
    """After promotion: the timeline, the current LSN; then the recovery settings are removed."""
    q = "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, pg_current_wal_lsn()"
    proc = _psql(socket_dir, args.port, args.user, q)
    if proc.returncode != 0:
        raise PitrError(f"cannot query the promoted server: {proc.stderr.strip()}")
    tli, lsn = proc.stdout.strip().split("|")
    resets = "; ".join(f"ALTER SYSTEM RESET {s}" for s in RECOVERY_SETTINGS)
    proc = subprocess.run(
        _psql_argv(socket_dir, args.port, args.user), input=resets + ";",
        capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise PitrError(f"recovered, but removing the recovery settings failed: {proc.stderr.strip()}",
                        hint="run ALTER SYSTEM RESET restore_command (and recovery_target_*) by hand")
    return int(tli), lsn


def _check_tablespaces(args: Args, pgdata: Path, socket_dir: str, plan: list[TablespacePlan],
                       events: Events) -> list[dict[str, str]]:
    """After promotion: every tablespace where the plan put it, reported with its name. One the backup did
    not have (created in the replayed WAL) points at a production directory: the server is stopped."""
    from steps.pg.server import as_server
    from steps.pg.tools import PG_BIN

    proc = _psql(socket_dir, args.port, args.user, TABLESPACES_SQL)
    if proc.returncode != 0:
        raise PitrError(f"recovered, but the tablespaces cannot be listed: {proc.stderr.strip()}")
    placed, problems, warnings = placed_tablespaces(proc.stdout, plan)
    for w in warnings:
        events.check("tablespaces", "warning", w)
    if problems:
        if not args.debian_cluster:
            subprocess.run(as_server([os.path.join(PG_BIN, "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w",
                                      "stop"]), capture_output=True)
        else:
            subprocess.run(["pg_ctlcluster", args.pg_version, str(args.debian_cluster), "stop", "-m", "immediate"],
                           capture_output=True)
        new_one = any("not in the base backup" in p for p in problems)
        raise PitrError("recovered, but " + "; ".join(problems) + "; the restored server was stopped",
                        hint="a tablespace created after the base backup is replayed at its original location: "
                             "take a base backup after CREATE TABLESPACE, and recover from it" if new_one else
                             f"check {pgdata}/pg_tblspc and {pgdata}/tablespace_map.old; start again into a "
                             "new data directory")
    for t in placed:
        print(f"pitr: tablespace {t['name']} (OID {t['oid']}) is at {t['location']} (it was at {t['original']})",
              flush=True)
    if placed:
        events.check("tablespaces", "ok", "; ".join(f"{t['name']} (OID {t['oid']}) at {t['location']}"
                                                    for t in placed))
    return placed


def _psql_argv(socket_dir: str, port: int, user: str) -> list[str]:
    from steps.pg.server import as_server
    from steps.pg.tools import tool

    return as_server([tool("psql"), "-h", socket_dir, "-p", str(port), "-U", user, "-d", "postgres", "-XAtq",
                      "-v", "ON_ERROR_STOP=1", "-f", "-"])


def _archive_end(store: Any, sysid: str, segsize: int) -> int | None:
    from steps.pg.walnames import parse_segment
    from steps.repository.layout import archived_segment, wal_prefix

    best = None
    for key, _ in store.list_keys(wal_prefix(sysid)):
        seg = archived_segment(key)
        if seg is not None:
            n = parse_segment(seg, segsize)[1]
            best = n if best is None or n > best else best
    return None if best is None else (best + 1) * segsize


# --- the action -----------------------------------------------------------------------------------------


def main(args: Args, events: Events) -> int:
    from steps.backup.basetar import (
        TABLESPACE_MAP,
        BaseBackupInvalid,
        check_tars,
        parse_server_manifest,
        parse_tablespace_map,
        tablespace_oids,
        tar_files,
    )
    from steps.pg.server import give_to_server
    from steps.pg.walnames import parse_lsn
    from steps.repository.catalogue import scan, usable_copies
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.layout import BACKUP_MANIFEST
    from steps.repository.manifest import BaseManifest

    t_begin = time.monotonic()
    cfg, config_path = load_repository_config(args.config)
    config_path = config_path.resolve()
    pgdata = Path(args.pgdata)
    stores = open_stores(cfg, "all")
    cat = scan(stores, kinds=("base",))
    for name, err in cat.errors.items():
        events.check(f"{name} repository", "warning", err)
    entry = choose_backup(cat.base, args)
    m: BaseManifest = entry.manifest
    ts_oids = backup_tablespace_oids(m)
    events.check("base backup chosen", "ok", f"{entry.backup_id} of cluster {entry.cluster}, ended "
                 f"{entry.time.isoformat()}, {m.size_bytes / 1e6:.1f} MB, {entry.level.name}" +
                 (f", {len(ts_oids)} tablespace(s)" if ts_oids else ""))
    print(f"pitr: base backup {entry.backup_id} (cluster {entry.cluster}, timeline {m.timeline}, ended "
          f"{entry.time.isoformat()}, {', '.join(entry.locations())})", flush=True)

    # What can be refused is refused before anything is fetched or created.
    if args.debian_cluster:
        _precheck_debian(args, pgdata)
    else:
        _check_empty(pgdata)
    precheck_tablespaces(args, pgdata, ts_oids)
    refuse_later_tablespaces(cfg, entry.cluster, entry.backup_id, ts_oids, events)
    socket_dir = args.socket_dir or ("/var/run/postgresql" if Path("/var/run/postgresql").is_dir()
                                     else str(pgdata.parent))
    fetch_root = Path(args.fetch_dir) if args.fetch_dir else pgdata.parent
    fetch_root.mkdir(parents=True, exist_ok=True)
    fetch_dir = Path(tempfile.mkdtemp(prefix=f".pitr-fetch-{entry.backup_id}-", dir=fetch_root))
    plan: list[TablespacePlan] = []
    try:
        copies = usable_copies(entry, source=args.source)
        t0 = time.monotonic()
        last_err: Exception | None = None
        for copy in copies:
            try:
                total = sum(o.size for o in m.objects)
                done = [0]

                def progress(n: int, total: int = total, done: list[int] = done) -> None:
                    done[0] += n
                    events.progress(round(done[0] / 1e6, 1), round(total / 1e6, 1), "MB", "fetching the base backup")

                for o in m.objects:
                    copy.store.fetch_file(copy.prefix + o.path, fetch_dir / o.path, size=o.size, sha256=o.sha256,
                                          progress=progress)
                last_err = None
                events.check("fetched", "ok", f"{len(m.objects)} objects from {copy.store.describe()}, sha256 checked")
                break
            except RunbookError as e:
                last_err = e
                events.check(f"fetch from {copy.store.name}", "warning", str(e))
        if last_err is not None:
            raise last_err
        fetch_s = time.monotonic() - t0

        smanifest = parse_server_manifest((fetch_dir / BACKUP_MANIFEST).read_bytes())
        tars = tar_files(fetch_dir)
        if sorted(tablespace_oids(tars), key=int) != ts_oids:
            raise PitrError(f"base backup {entry.backup_id}: its tablespace tars ({tablespace_oids(tars)}) are "
                            f"not those of its manifest ({ts_oids})")
        tsmap: dict[str, str] = {}
        if ts_oids:
            tsmap, names = read_tablespace_facts(tars)
            default_root = Path(args.tablespace_dir) if args.tablespace_dir else Path(f"{pgdata}_tablespaces")
            plan = plan_tablespaces(tsmap, ts_oids, args.tablespaces, default_root, pgdata, names)
        if args.debian_cluster:
            _prepare_debian(args, pgdata)
        else:
            _prepare_bare(pgdata)
        make_tablespace_dirs(plan)
        for p in plan:
            print(f"pitr: tablespace {p.oid} (at {p.original} in the backup) goes to {p.directory}", flush=True)

        t1 = time.monotonic()
        size = smanifest.size_bytes
        got = [0]

        def extracted(n: int) -> None:
            got[0] += n
            if got[0] % (64 << 20) < n or got[0] == size:
                events.progress(round(got[0] / 1e6, 1), round(size / 1e6, 1), "MB", "extracting and checking")

        checked = check_tars(tars, smanifest, dest=pgdata, progress=extracted,
                             skip=lambda p: p.startswith("pg_wal/"),
                             capture=("backup_label", "global/pg_control", TABLESPACE_MAP),
                             tablespace_dest={p.oid: p.directory for p in plan})
        if plan and parse_tablespace_map(checked.captured[TABLESPACE_MAP]) != tsmap:
            raise PitrError(f"{TABLESPACE_MAP} changed between two reads of the fetched base.tar")
        extract_s = time.monotonic() - t1
        events.check("restored", "ok", f"{checked.files} files match the backup_manifest ({checked.size / 1e6:.1f} MB)"
                     + (f", {len(plan)} tablespace(s) among them" if plan else ""))
    except BaseBackupInvalid as e:
        raise PitrError(f"base backup {entry.backup_id}: {e.message}", hint="choose another base backup "
                        "(backup_id), and verify this one with `runbook verify-backup --backup ID`") from None
    finally:
        shutil.rmtree(fetch_dir, ignore_errors=True)

    empty_pg_wal(pgdata)
    if plan:
        write_tablespace_map(pgdata, plan)
    write_auto_conf(pgdata, recovery_settings(args, config_path), server_settings(args, socket_dir))
    give_to_server(pgdata)
    for p in plan:
        give_to_server(p.directory)
    if args.archive_to:
        Path(args.archive_to).mkdir(parents=True, exist_ok=True)
        give_to_server(Path(args.archive_to))

    log = (Path("/var/log/postgresql") / f"postgresql-{args.pg_version}-{args.debian_cluster}.log"
           if args.debian_cluster else pgdata.parent / f"{pgdata.name}.recovery.log")
    end_lsn = _archive_end(copies[0].store, entry.cluster, m.wal_segment_size)
    print(f"pitr: starting the restored server on {socket_dir}:{args.port}; replaying to "
          f"{args.target_kind} {args.target}".rstrip(), flush=True)
    t2 = time.monotonic()
    _start(args, pgdata, log)
    last_ts, last_lsn = _watch(args, pgdata, log, socket_dir, events, parse_lsn(m.start_lsn), end_lsn, t2)
    replay_s = time.monotonic() - t2
    timeline, _current = _finish(args, socket_dir)
    placed = _check_tablespaces(args, pgdata, socket_dir, plan, events)  # also when the backup had none
    text = log.read_text(errors="replace") if log.exists() else ""
    from_log = LAST_XACT_RE.findall(text)
    recovery_point = _iso(from_log[-1]) if from_log else (_iso(last_ts) if last_ts else None)
    redo = REDO_DONE_RE.findall(text)
    lsn = redo[-1] if redo else last_lsn

    events.check("recovery ended", "ok", f"promoted on timeline {timeline}; recovery point {recovery_point}")
    if recovery_point is None:
        events.check("recovery point", "warning", "no transaction was replayed after the base backup: the "
                     "recovery point is the backup's end")
        recovery_point = m.stopped_at.isoformat()
    events.output("recovery_point", recovery_point)
    events.output("timeline", timeline)
    events.output("replay_s", round(replay_s, 1))
    events.output("data_directory", str(pgdata))
    events.output("lsn", lsn)
    events.output("backup_id", entry.backup_id)
    events.output("log_file", str(log))
    if plan or placed:
        events.output("tablespaces", placed)
    print(f"pitr: recovered to {recovery_point} (last replayed transaction), timeline {timeline}, redo done at "
          f"{lsn}; fetch {fetch_s:.1f} s, restore {extract_s:.1f} s, replay {replay_s:.1f} s, total "
          f"{time.monotonic() - t_begin:.1f} s", flush=True)
    print(f"pitr: the restored server runs on {socket_dir}:{args.port} with archiving "
          f"{'to ' + args.archive_to if args.archive_to else 'off'}; re-protect it before the all-clear", flush=True)
    return 0


def _iso(text: str) -> str:
    """PostgreSQL's `2026-11-25 14:35:03.2588+00` as ISO 8601."""
    t = text.strip()
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        try:
            dt = datetime.strptime(t, "%Y-%m-%d %H:%M:%S.%f%z")
        except ValueError:
            return t
    return dt.isoformat()
