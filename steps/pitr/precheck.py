"""What a point-in-time recovery checks before it restores anything, so that what cannot work is named first.

- `check_binaries`: the replacement server's binaries (`bindir`: `postgres --version`, `pg_ctl --version`) are
  the base backup's major version: a physical backup is started and replayed only by the major version that
  wrote it (a logical dump restores into a newer one; a base backup never does). Both versions are named.
- `check_space`: the file system of the new data directory has room for the base backup (and for its fetched
  objects when they are fetched onto the same file system), with a margin for the WAL replayed.
- `wal_gap`: the archive's listing from the backup's first WAL segment on: a segment missing between two
  archived ones is a gap that no recovery crosses. `refuse_beyond_gap` refuses a target the listing proves is
  past the gap (an LSN past it, `latest`, or a time after the segment that follows the gap was archived), and
  names the best reachable point: the end of the WAL before the gap, which `target_kind: latest` reaches (a
  time or LSN target needs a record past it to stop at, and that record is in the missing segment).
- `earlier_attempt`: a data directory this run's own earlier `pitr` attempt made (its marker
  `<pgdata>.pitr-attempt.json` names the run) is moved aside, its server stopped first, so that a retry with a
  corrected target can go on; an existing data directory is never deleted, and one without the marker is
  refused as before (steps.pitr.datadir).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steps.events import Events
from steps.pitr.args import Args, bindir, parse_target_time
from steps.pitr.errors import PitrError

VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
WAL_MARGIN_SEGMENTS = 4  # segments restored into pg_wal while replaying, and the new timeline's first ones
MARKER_SUFFIX = ".pitr-attempt.json"


# --- the binaries ----------------------------------------------------------------------------------------


def binary_version(path: str) -> tuple[str, int]:
    """(the version text, its major number) that `path --version` reports; PitrError when it cannot say."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise PitrError(f"{path} cannot be run ({e.strerror})", hint="set `bindir` to the directory of the "
                        "replacement server's PostgreSQL binaries") from None
    m = VERSION_RE.search(proc.stdout)
    if proc.returncode != 0 or m is None:
        raise PitrError(f"{path} --version did not say which PostgreSQL it is (exit {proc.returncode}): "
                        f"{(proc.stdout + proc.stderr).strip()[:200]!r}")
    text = m.group(1) + (f".{m.group(2)}" if m.group(2) else "")
    return text, int(m.group(1))


def check_binaries(args: Args, manifest: Any, events: Events) -> str:
    """The server binaries' major version is the backup's; returns the version text. Else a PitrError naming
    both versions, before anything is fetched or created."""
    where = bindir(args)
    backup_version = str(manifest.cluster.server_version)
    backup_major = int(manifest.cluster.server_version_num) // 10000
    found: dict[str, str] = {}
    for name in ("postgres", "pg_ctl"):
        text, major = binary_version(os.path.join(where, name))
        found[name] = text
        if major != backup_major:
            events.check("server major version", "failed", f"{name} in {where} is PostgreSQL {text}; the base "
                         f"backup is PostgreSQL {backup_version}")
            raise PitrError(
                f"major version mismatch: the replacement server's {name} ({where}) is PostgreSQL {text}, the base "
                f"backup {manifest.backup_id} is of PostgreSQL {backup_version} (major {backup_major}): a base "
                f"backup is started and replayed only by PostgreSQL {backup_major}; nothing was restored",
                hint=f"install PostgreSQL {backup_major} on the replacement server (Debian: apt install "
                     f"postgresql-{backup_major}) and set `bindir` to its binaries (e.g. "
                     f"/usr/lib/postgresql/{backup_major}/bin); to move to {major}, recover on {backup_major} first, "
                     "then upgrade (pg_upgrade, or a logical dump and restore)")
    events.check("server major version", "ok", f"postgres {found['postgres']} in {where}, as the base backup "
                 f"(PostgreSQL {backup_version})")
    return found["postgres"]


# --- the space -------------------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_space(args: Args, pgdata: Path, manifest: Any, fetch_root: Path | None, events: Events) -> None:
    """Room for the restored cluster on the data directory's file system (and for the fetched objects when they
    land on the same one): a PitrError naming what is needed and what is free, before anything is fetched."""
    data_at = _existing(pgdata)
    size = int(manifest.cluster.size_bytes or manifest.size_bytes)
    need = size + WAL_MARGIN_SEGMENTS * int(manifest.wal_segment_size)
    also = ""
    if fetch_root is not None:
        fetch_at = _existing(fetch_root)
        if os.stat(fetch_at).st_dev == os.stat(data_at).st_dev:
            need += int(manifest.stored_bytes)
            also = f" plus the fetched backup ({manifest.stored_bytes / 1e6:.1f} MB, fetched onto the same file system)"
    free = shutil.disk_usage(data_at).free
    detail = (f"{free / 1e6:.1f} MB free on the file system of {pgdata} ({data_at}); about {need / 1e6:.1f} MB "
              f"needed: the cluster ({size / 1e6:.1f} MB){also} and {WAL_MARGIN_SEGMENTS} WAL segments")
    if free < need:
        events.check("free space for the recovery", "failed", detail)
        raise PitrError(f"not enough space for the recovery: {detail}; nothing was restored",
                        hint="point `pgdata` at a file system with room (a new, empty directory), or make room "
                             "there; set `fetch_dir` to fetch the backup onto another file system")
    events.check("free space for the recovery", "ok", detail)


# --- the WAL ---------------------------------------------------------------------------------------------


@dataclass
class Gap:
    """The first hole in the archived WAL after a base backup."""

    missing: list[str]  # the segments missing (the first few)
    last_before: str  # the last segment before the gap
    reachable_lsn: int  # the end of the WAL before the gap
    last_before_archived: datetime | None  # when the last segment before the gap was archived (upper bound)
    after: str  # the first archived segment after the gap
    after_archived: datetime | None  # when it was archived: every record of the gap is older

    def describe(self) -> str:
        from steps.pg.walnames import format_lsn

        more = f" and {len(self.missing) - 1} more" if len(self.missing) > 1 else ""
        when = (f", archived {self.last_before_archived.isoformat(timespec='seconds')}"
                if self.last_before_archived else "")
        where = f"between {self.last_before} and {self.after}" if self.after else \
            f"after {self.last_before}; the signed WAL ledgers list it as archived"
        return (f"WAL segment {self.missing[0]}{more} is missing from the archive ({where}): recovery can replay "
                f"only up to LSN {format_lsn(self.reachable_lsn)}, the end of {self.last_before}{when}")


def _present(stores: list[Any], entry: Any) -> dict[int, float]:
    """The segment numbers archived on the backup's timeline in any of `stores` (WAL stores, steps.wal.store:
    `list` gives each object's time; wal-fetch reads from whichever has it), with the earliest time each was
    stored."""
    from steps.pg.walnames import parse_segment
    from steps.repository.layout import archived_segment, wal_prefix

    m = entry.manifest
    size = int(m.wal_segment_size)
    tli, _first = parse_segment(m.start_wal, size)
    present: dict[int, float] = {}
    for store in stores:
        for listed in store.list(wal_prefix(entry.cluster)):
            seg = archived_segment(listed.key)
            if seg is None:
                continue
            t, n = parse_segment(seg, size)
            if t == tli:
                stored = float(listed.mtime or 0)
                present[n] = min(present[n], stored) if n in present and present[n] else stored
    return present


def wal_gap(stores: list[Any], entry: Any) -> Gap | None:
    """The first gap in the archive of `entry`'s cluster on its timeline, from its first segment on, across the
    repositories `stores`; None when the segments there are contiguous."""
    from steps.pg.walnames import parse_segment, segment_name

    m = entry.manifest
    size = int(m.wal_segment_size)
    tli, first = parse_segment(m.start_wal, size)
    present = {n: t for n, t in _present(stores, entry).items() if n >= first}
    if first not in present:
        return None  # the backup's own WAL: verified with the backup; the replay names it if it is gone
    top = max(present)
    n = first
    while n in present:
        n += 1
    if n > top:
        return None
    missing = []
    k = n
    while k not in present:
        missing.append(segment_name(tli, k, size))
        k += 1

    def at(x: int) -> datetime | None:
        return datetime.fromtimestamp(present[x], UTC) if present.get(x) else None

    return Gap(missing=missing, last_before=segment_name(tli, n - 1, size), reachable_lsn=n * size,
               last_before_archived=at(n - 1), after=segment_name(tli, k, size), after_archived=at(k))


def ledger_gap(stores: list[Any], entry: Any, index: Any) -> Gap | None:
    """The first segment the signed WAL ledgers (`index`, steps.wal.ledger.Index) list as archived, from the
    backup's first segment on its timeline, that no repository of `stores` has any more (a lost tail the listing
    alone cannot show as a gap); None when every listed one is there."""
    from steps.pg.walnames import parse_segment, segment_name

    m = entry.manifest
    size = int(m.wal_segment_size)
    tli, first = parse_segment(m.start_wal, size)
    present = _present(stores, entry)
    signed = sorted(n for name in index.segments if len(name) == 24 and name[:8] == m.start_wal[:8]
                    and (n := parse_segment(name, size)[1]) >= first)
    lost = [n for n in signed if n not in present]
    if not lost or lost[0] == first:
        return None  # nothing lost, or the backup's own WAL: the replay names that itself
    n = lost[0]
    missing = []
    k = n
    while k not in present and k <= signed[-1]:
        missing.append(segment_name(tli, k, size))
        k += 1
    after = next((x for x in sorted(present) if x > n), None)

    def at(x: int | None) -> datetime | None:
        return datetime.fromtimestamp(present[x], UTC) if x is not None and present.get(x) else None

    return Gap(missing=missing, last_before=segment_name(tli, n - 1, size), reachable_lsn=n * size,
               last_before_archived=at(n - 1), after=segment_name(tli, after, size) if after is not None else "",
               after_archived=at(after))


def refuse_beyond_gap(args: Args, gap: Gap, events: Events, run_hint: str) -> None:
    """Refuse a target the listing proves lies past the gap; warn when it may; say the best reachable point."""
    from steps.pg.walnames import format_lsn, parse_lsn

    best = _best(gap)
    events.output("reachable_lsn", format_lsn(gap.reachable_lsn))
    if gap.last_before_archived is not None:
        events.output("reachable_before", gap.last_before_archived.isoformat())
    proven = False
    if args.target_kind == "latest":
        proven = True
        why = "target latest would stop at the gap and promote, leaving the archived WAL after it unreplayed"
    elif args.target_kind == "lsn":
        proven = parse_lsn(args.target) >= gap.reachable_lsn
        why = f"the target LSN {args.target} is past it"
    elif args.target_kind == "time" and gap.after_archived is not None:
        target = parse_target_time(args.target)
        proven = target >= gap.after_archived
        why = (f"the target {target.isoformat()} is after {gap.after} was archived "
               f"({gap.after_archived.isoformat(timespec='seconds')}), so every record of the missing WAL is older "
               "than the target" if proven else
               f"the target {target.isoformat()} may lie past it (the listing cannot tell: {gap.after}, after the "
               f"gap, was archived only at {gap.after_archived.isoformat(timespec='seconds')})")
    else:
        why = f"the target {args.target_kind} {args.target} may lie past it".rstrip()
    print(f"pitr: {gap.describe()}", flush=True)
    if not proven:
        events.check("WAL continuity", "warning", f"{gap.describe()}; {why}: if the replay ends there, {best}")
        return
    events.check("WAL continuity", "failed", f"{gap.describe()}; {why}")
    if args.target_kind == "latest" and args.accept_gap:
        events.check("gap in the WAL accepted", "warning", f"accept_gap is set: the recovery stops at LSN "
                     f"{format_lsn(gap.reachable_lsn)}; the archived WAL after the gap is not replayed")
        return
    raise PitrError(
        f"the target cannot be reached: {gap.describe()}; {why}. Nothing was restored",
        hint=_gap_hint(gap, run_hint))


def _best(gap: Gap) -> str:
    from steps.pg.walnames import format_lsn

    return (f"the best reachable point is the end of the WAL before the gap (LSN {format_lsn(gap.reachable_lsn)}"
            + (f", its last transaction before {gap.last_before_archived.isoformat(timespec='seconds')}"
               if gap.last_before_archived else "")
            + "): recover with target_kind latest, which stops there (a time or LSN target needs a record past it "
              "to stop at, and that record is in the missing segment)")


def _gap_hint(gap: Gap, run_hint: str) -> str:
    return (f"{_best(gap)}, and set accept_gap to accept that data loss ({run_hint}); if the segment exists "
            "elsewhere (the old server's pg_wal, another copy of the repository), put it back into the archive and "
            "retry")


def stopped_at_gap(gap: Gap, failure: PitrError, run_hint: str) -> PitrError:
    """The replay's failure, when the archive's listing showed a gap: it stopped there; what to do."""
    said = failure.message.strip().splitlines()
    return PitrError(f"target beyond the archived WAL: the replay stopped at the gap: {gap.describe()}; "
                     f"{_best(gap)} (the server: {said[-1] if said else failure.message})",
                     hint=_gap_hint(gap, run_hint) + "; the failed attempt's data directory is left for inspection "
                          "(a retry in this run moves it aside)")


def cut_index(index: Any, gap: Gap) -> Any:
    """The verified WAL index without the segments from the gap on (`accept_gap`): wal-fetch answers "not
    archived" for them, so the replay ends at the gap and promotes, instead of stopping on a segment the signed
    ledgers list but the archive lost."""
    from steps.wal.ledger import wal_order

    cut = wal_order(gap.missing[0])
    index.segments = {n: sha for n, sha in index.segments.items() if len(n) != 24 or wal_order(n) < cut}
    return index


# --- an earlier attempt ----------------------------------------------------------------------------------


def marker_path(pgdata: Path) -> Path:
    return pgdata.parent / f"{pgdata.name}{MARKER_SUFFIX}"


def write_marker(pgdata: Path, backup_id: str, args: Args) -> None:
    """Beside the data directory (ours, 0600, never through a link): this run's pitr made it. Only where the data
    directory's parent is root's (or ours): nothing is written into a directory another user owns (as
    /var/lib/postgresql/15, the server user's), and there an earlier attempt is refused, never moved."""
    from steps.fs import UnsafePath, check_parent

    try:
        check_parent(pgdata.parent)
    except UnsafePath:
        return
    path = marker_path(pgdata)
    data = json.dumps({"pgdata": str(pgdata), "run_id": os.environ.get("RUNBOOK_RUN_ID", ""),
                       "backup_id": backup_id, "target_kind": args.target_kind, "target": args.target,
                       "at": datetime.now(UTC).isoformat()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)


def _read_marker(pgdata: Path) -> dict[str, Any] | None:
    path = marker_path(pgdata)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None  # not ours alone: no proof of anything
        try:
            data = json.loads(f.read())
        except ValueError:
            return None
    return data if isinstance(data, dict) else None


def earlier_attempt(args: Args, pgdata: Path, events: Events) -> None:
    """When `pgdata` is not empty and this run's own earlier pitr attempt made it: its server stopped, the
    directory (and its recovery log) moved aside to `<pgdata>.attempt-<time>`; never deleted."""
    from steps.pitr.recovery import postmaster_alive, server_log, stop_server

    if args.debian_cluster or pgdata.is_symlink() or not pgdata.is_dir() or not any(pgdata.iterdir()):
        return
    marker = _read_marker(pgdata)
    run_id = os.environ.get("RUNBOOK_RUN_ID", "")
    if marker is None or marker.get("pgdata") != str(pgdata) or not run_id or marker.get("run_id") != run_id:
        return  # not ours to move: check_empty refuses it, as any non-empty directory
    if postmaster_alive(pgdata):
        print(f"pitr: the server of the earlier attempt runs on {pgdata}: stopping it", flush=True)
        stop_server(args, pgdata)
        if postmaster_alive(pgdata):
            raise PitrError(f"the earlier attempt's server on {pgdata} did not stop", hint="stop it by hand "
                            "(pg_ctl -D DIR stop), then retry")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = pgdata.with_name(f"{pgdata.name}.attempt-{stamp}")
    os.rename(pgdata, aside)
    log = server_log(args, pgdata)
    if log.exists() and not log.is_symlink():
        os.rename(log, log.with_name(f"{aside.name}.recovery.log"))
    marker_path(pgdata).unlink(missing_ok=True)
    events.check("earlier attempt moved aside", "warning", f"{pgdata} held this run's earlier recovery (target "
                 f"{marker.get('target_kind')} {marker.get('target')}): its server stopped, moved aside to {aside} "
                 "(kept, not deleted)")
    print(f"pitr: this run's earlier recovery in {pgdata} (target {marker.get('target_kind')} "
          f"{marker.get('target')}) is moved aside to {aside}; nothing is deleted", flush=True)
