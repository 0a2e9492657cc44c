"""Tablespaces of a restored base backup: where each goes, and the checks that it went there.

base.tar's tablespace_map names the production directory of each tablespace; the server would make its
pg_tblspc/<oid> symlink point there at the start of recovery. Each <oid>.tar is extracted into a new
directory instead (a mapping, else <pgdata>_tablespaces/<oid>) and tablespace_map is rewritten to match.

- before anything is fetched: `precheck_tablespaces` (the mapping against the backup's OIDs),
  `refuse_later_tablespaces` (a production tablespace newer than the backup, whose directory is on this host);
- from the fetched backup: `read_tablespace_facts`, `plan_tablespaces` (a `TablespacePlan` per tablespace),
  `make_tablespace_dirs`, `write_tablespace_map`;
- after promotion: `placed_tablespaces` (the restored server's `TABLESPACES_SQL` rows against the plan) and
  `check_placed` (the same, asked of the server, which is stopped if a tablespace is not where it belongs).

verify-backup reuses `TablespacePlan`, `backup_tablespace_oids`, `read_tablespace_facts`, `plan_tablespaces`,
`make_tablespace_dirs`, `write_tablespace_map`, `TABLESPACES_SQL` and `placed_tablespaces`.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.events import Events
from steps.pitr.args import Args
from steps.pitr.datadir import require_new_or_empty
from steps.pitr.errors import PitrError
from steps.pitr.recovery import psql, stop_immediately


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
    require_new_or_empty(directory, f"{what}: ", "a restored tablespace goes only into a new or empty directory "
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


def make_tablespace_dirs(plan: list[TablespacePlan], *, probe: bool = True) -> None:
    """Each directory made 0700 and ours while its tar is extracted into it (the server's user gets it with
    the data directory), refused when it is a symlink; the server's user must reach it. A parent we make
    (`<pgdata>_tablespaces`) is the server's user's, 0700, so that it can traverse it. Modes and owners are set
    on descriptors (O_NOFOLLOW), never by following a path. `probe=False`: the caller hands a whole tree to
    that user later (verify-backup's scratch cluster), and no probe can pass before."""
    from steps.fs import UnsafePath, make_real_dir
    from steps.pg.server import server_user
    from steps.pitr.datadir import reachable

    pw = server_user()
    for p in plan:
        what = f"directory of tablespace {p.oid}"
        made_parent = not os.path.lexists(p.directory.parent)
        try:
            if made_parent and p.key is None:  # <pgdata>_tablespaces: ours, like the data directory
                make_real_dir(p.directory.parent, mode=0o700, uid=pw.pw_uid if pw else None,
                              gid=pw.pw_gid if pw else None, what=f"parent of the {what}")
            make_real_dir(p.directory, mode=0o700, uid=os.geteuid(), gid=os.getegid(), what=what)
        except UnsafePath as e:
            raise PitrError(e.message) from None
        if pw is not None and probe:
            reachable(pw.pw_name, p.directory)


def write_tablespace_map(pgdata: Path, plan: list[TablespacePlan]) -> None:
    from steps.backup.basetar import TABLESPACE_MAP, format_tablespace_map
    from steps.fs import open_beneath, open_real_dir

    data = format_tablespace_map({p.oid: str(p.directory) for p in plan})
    dir_fd = open_real_dir(pgdata, "data directory")
    try:
        with suppress(FileNotFoundError):  # the backup's, checked and read already (a link goes, unfollowed)
            os.unlink(TABLESPACE_MAP, dir_fd=dir_fd)
        fd = open_beneath(dir_fd, TABLESPACE_MAP, mode=0o600, what=TABLESPACE_MAP)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    finally:
        os.close(dir_fd)


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


def check_placed(args: Args, pgdata: Path, socket_dir: str, plan: list[TablespacePlan],
                 events: Events) -> list[dict[str, str]]:
    """After promotion: every tablespace where the plan put it, reported with its name. One the backup did
    not have (created in the replayed WAL) points at a production directory: the server is stopped."""
    proc = psql(socket_dir, args.port, args.user, TABLESPACES_SQL)
    if proc.returncode != 0:
        raise PitrError(f"recovered, but the tablespaces cannot be listed: {proc.stderr.strip()}")
    placed, problems, warnings = placed_tablespaces(proc.stdout, plan)
    for w in warnings:
        events.check("tablespaces", "warning", w)
    if problems:
        stop_immediately(args, pgdata)
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
