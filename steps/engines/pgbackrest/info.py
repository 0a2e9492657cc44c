"""pgBackRest's `info --output=json` (one stanza's object) read into the product's facts (steps.engines.facts).

Everything in it is checked for shape before it is used: the JSON comes from a repository, which may have been
written by an attacker, or from an executable that is not pgBackRest. A field of the wrong type, a WAL name or
LSN that is not one, a time out of range: a PgBackRestError naming the field, never a traceback.
Only the stanza's current database (its newest `db` entry: a stanza-upgrade makes a new one) counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from steps.engines.facts import ArchiveRange, PhysicalBackup
from steps.engines.pgbackrest.runner import PgBackRestError

WAL_NAME = re.compile(r"^[0-9A-F]{24}$")
LSN = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")
LABEL = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
ARCHIVE_ID = re.compile(r"^\d{1,2}-\d{1,9}$")
KINDS = ("full", "diff", "incr")
_MIN_TS, _MAX_TS = 0, 32503680000  # 1970 .. 3000


@dataclass(frozen=True)
class StanzaInfo:
    """One stanza as `info` tells it. `backups`: the current database's, newest first; `archive`: its WAL range
    (newest_archived_at unknown here: info does not say it; see the engine, which asks the repository)."""

    name: str
    status_code: int
    status_message: str
    system_identifier: str | None
    pg_version: str | None
    archive_id: str | None
    backups: list[PhysicalBackup]
    archive: ArchiveRange
    cipher: str


class _Reader:
    def __init__(self, stanza: str) -> None:
        self.stanza = stanza

    def fail(self, where: str, what: str) -> PgBackRestError:
        return PgBackRestError(f"pgbackrest info of stanza {self.stanza}: {where}: {what}; not used",
                               hint="pgBackRest wrote something else, or its repository was altered: "
                                    "`pgbackrest info` and `pgbackrest verify` say more")

    def get(self, obj: Any, key: str, kind: type | tuple[type, ...], where: str, *, optional: bool = False) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(where, f"expected an object, got {type(obj).__name__}")
        if key not in obj or obj[key] is None:
            if optional:
                return None
            raise self.fail(f"{where}.{key}", "missing")
        v = obj[key]
        if kind is int and isinstance(v, bool) or not isinstance(v, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(f"{where}.{key}", f"expected {names}, got {type(v).__name__}")
        return v

    def match(self, obj: Any, key: str, pattern: re.Pattern[str], where: str, *, optional: bool = False) -> Any:
        v = self.get(obj, key, str, where, optional=optional)
        if v is not None and not pattern.match(v):
            raise self.fail(f"{where}.{key}", f"{v[:40]!r} is not {pattern.pattern}")
        return v

    def time(self, obj: Any, key: str, where: str) -> datetime:
        v = self.get(obj, key, int, where)
        if not _MIN_TS <= v <= _MAX_TS:
            raise self.fail(f"{where}.{key}", f"{v} is not a time")
        return datetime.fromtimestamp(v, UTC)

    def size(self, obj: Any, key: str, where: str, *, optional: bool = False) -> int | None:
        v = self.get(obj, key, int, where, optional=optional)
        if v is not None and v < 0:
            raise self.fail(f"{where}.{key}", f"{v} is negative")
        return v


def parse_info(doc: dict[str, Any], stanza: str) -> StanzaInfo:
    """The facts of one stanza object of `pgbackrest info --output=json` (runner.info gives it)."""
    r = _Reader(stanza)
    where = "stanza"
    status = r.get(doc, "status", dict, where)
    code = r.get(status, "code", int, "status")
    message = r.get(status, "message", str, "status")
    dbs = r.get(doc, "db", list, where)
    current: dict[str, Any] | None = None
    for i, db in enumerate(dbs):
        r.get(db, "id", int, f"db[{i}]")
        if current is None or db["id"] > current["id"]:
            current = db
    sysid = version = archive_id = None
    db_id = None
    if current is not None:
        db_id = current["id"]
        sid = r.get(current, "system-id", int, "db")
        if sid < 0 or sid >= 1 << 64:
            raise r.fail("db.system-id", f"{sid} is not a system identifier")
        sysid = str(sid)
        version = r.get(current, "version", str, "db")
        if not re.match(r"^\d{1,2}(\.\d{1,2})?$", version):
            raise r.fail("db.version", f"{version[:20]!r} is not a PostgreSQL version")
    backups: list[PhysicalBackup] = []
    for i, b in enumerate(r.get(doc, "backup", list, where)):
        w = f"backup[{i}]"
        db = r.get(b, "database", dict, w)
        label = r.match(b, "label", LABEL, w)  # every backup is checked, also those skipped below
        kind = r.get(b, "type", str, w)
        if kind not in KINDS:
            raise r.fail(f"{w}.type", f"{kind[:20]!r} is not one of {', '.join(KINDS)}")
        ts = r.get(b, "timestamp", dict, w)
        arch = r.get(b, "archive", dict, w)
        lsn = r.get(b, "lsn", dict, w, optional=True) or {}
        inf = r.get(b, "info", dict, w)
        repo = r.get(inf, "repository", dict, f"{w}.info", optional=True) or {}
        ref = r.get(b, "reference", list, w, optional=True) or []
        for j, x in enumerate(ref):
            if not isinstance(x, str) or not LABEL.match(x):
                raise r.fail(f"{w}.reference[{j}]", "not a backup label")
        started, stopped = r.time(ts, "start", f"{w}.timestamp"), r.time(ts, "stop", f"{w}.timestamp")
        if stopped < started:
            raise r.fail(f"{w}.timestamp", "stops before it starts")
        start_wal = r.match(arch, "start", WAL_NAME, f"{w}.archive")
        stop_wal = r.match(arch, "stop", WAL_NAME, f"{w}.archive")
        start_lsn = r.match(lsn, "start", LSN, f"{w}.lsn", optional=True) or ""
        stop_lsn = r.match(lsn, "stop", LSN, f"{w}.lsn", optional=True) or ""
        size = r.size(inf, "size", f"{w}.info") or 0
        stored = r.size(repo, "delta", f"{w}.info.repository", optional=True)
        if r.get(db, "id", int, f"{w}.database") != db_id:
            continue  # a backup of an earlier database of the stanza (before a stanza-upgrade)
        if r.get(b, "error", bool, w, optional=True):
            continue  # pgBackRest says the backup has errors (checksum, ...): not a backup to recover from
        backups.append(PhysicalBackup(
            label=label, kind=kind, started_at=started, stopped_at=stopped,  # type: ignore[arg-type]
            start_wal=start_wal, stop_wal=stop_wal, start_lsn=start_lsn, stop_lsn=stop_lsn, size_bytes=size,
            stored_bytes=stored,
            reference=tuple(ref), where=("pgbackrest",), system_identifier=sysid))
    backups.sort(key=lambda x: (x.stopped_at, x.label), reverse=True)
    lo = hi = None
    for i, a in enumerate(r.get(doc, "archive", list, where)):
        w = f"archive[{i}]"
        if r.get(r.get(a, "database", dict, w), "id", int, f"{w}.database") != db_id:
            continue
        archive_id = r.match(a, "id", ARCHIVE_ID, w)
        amin = r.match(a, "min", WAL_NAME, w, optional=True)
        amax = r.match(a, "max", WAL_NAME, w, optional=True)
        if amin is not None and (lo is None or amin < lo):
            lo = amin
        if amax is not None and (hi is None or amax > hi):
            hi = amax
    cipher = r.get(doc, "cipher", str, where, optional=True) or "none"
    return StanzaInfo(name=stanza, status_code=code, status_message=message[:300], system_identifier=sysid,
                      pg_version=version, archive_id=archive_id, backups=backups,
                      archive=ArchiveRange(min_wal=lo, max_wal=hi, where=f"pgbackrest stanza {stanza}"),
                      cipher=cipher[:40])


def newest_archived_at(doc: Any, wal: str) -> datetime | None:
    """When WAL file `wal` was archived, from `repo-ls --output=json` of its archive directory (pgBackRest stores
    it as NAME-SHA1[.EXT]; the listing gives each file's modification time). None when it is not listed."""
    if not isinstance(doc, dict):
        raise PgBackRestError(f"pgbackrest repo-ls of the archive: expected an object, got {type(doc).__name__}")
    best = None
    for name, entry in doc.items():
        if not isinstance(name, str) or not name.startswith(wal + "-") or not isinstance(entry, dict):
            continue
        t = entry.get("time")
        if isinstance(t, bool) or not isinstance(t, int) or not _MIN_TS <= t <= _MAX_TS:
            raise PgBackRestError(f"pgbackrest repo-ls of the archive: {name[:60]!r} has no valid time")
        best = t if best is None else max(best, t)
    return None if best is None else datetime.fromtimestamp(best, UTC)
