"""pitr: point-in-time recovery from a base backup plus archived WAL, into a new data directory.

With `engine: pgbackrest` in the repository config the whole action is steps.pitr.pgbackrest
(`pgbackrest restore`, then the same recovery machinery, report and outputs as below).

1. The target: a time (ISO 8601 **with** a zone; one without is refused), an xid, an LSN, a restore point
   name, `latest` or `immediate` (the end of the base backup). The base backup is the newest `readable`
   one that **ended before** the target (its stop time < the target time; for an LSN, its stop LSN <= the
   target); none: "target before the backup ends", with the oldest backup's end, and what to do.
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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.events import Events
from steps.pitr.args import Args
from steps.pitr.backup import choose_backup, fetch_objects, restore_files
from steps.pitr.datadir import check_empty, precheck_debian
from steps.pitr.errors import PitrError
from steps.pitr.ledgers import remove_verified, verified_wal, write_verified
from steps.pitr.precheck import (
    Gap,
    check_binaries,
    check_space,
    cut_index,
    earlier_attempt,
    ledger_gap,
    refuse_beyond_gap,
    stopped_at_gap,
    wal_gap,
    write_marker,
)
from steps.pitr.recovery import (
    archive_end,
    empty_pg_wal,
    finish_recovery,
    recovery_facts,
    recovery_settings,
    server_log,
    server_settings,
    start_server,
    watch_recovery,
    write_auto_conf,
)
from steps.pitr.tablespaces import (
    TablespacePlan,
    backup_tablespace_oids,
    check_placed,
    precheck_tablespaces,
    refuse_later_tablespaces,
    write_tablespace_map,
)


@dataclass
class Recovered:
    """What the replay came to."""

    log: Path
    timeline: int
    recovery_point: str | None
    lsn: str | None
    replay_s: float
    placed: list[dict[str, str]]


def main(args: Args, events: Events) -> int:
    from steps.backup.basetar import BaseBackupInvalid
    from steps.repository.catalogue import usable_copies
    from steps.repository.config import load_repository_config

    t_begin = time.monotonic()
    cfg, config_path = load_repository_config(args.config)
    config_path = config_path.resolve()
    if getattr(cfg, "engine", "own") == "pgbackrest":  # the same recovery through pgBackRest's restore
        from steps.pitr.pgbackrest import pitr

        return pitr(args, cfg, config_path, events)
    if args.delta:
        raise PitrError("delta: true is for engine pgbackrest (its restore --delta); the own engine restores only "
                        "into a new or empty data directory", hint="remove delta, and choose a new data directory")
    pgdata = Path(args.pgdata)
    entry, ts_oids = _pick(args, cfg, events)
    gap = _check_wal(args, cfg, entry, events)
    _refuse_early(args, cfg, pgdata, entry, ts_oids, events)
    if args.check_only:
        events.check("recovery can go ahead", "ok", f"base backup {entry.backup_id}, target {args.target_kind} "
                     f"{args.target}".rstrip() + f", into {pgdata}: nothing was changed (check_only)")
        print(f"pitr: checks passed; nothing was changed (check_only): base backup {entry.backup_id} into {pgdata}",
              flush=True)
        return 0
    index = verified_wal(args, cfg, entry, events)
    if gap is None and index is not None:
        gap = _check_ledger_gap(args, cfg, entry, index, events)
    if gap is not None and args.accept_gap and args.target_kind == "latest" and index is not None:
        index = cut_index(index, gap)  # the replay ends at the gap (accepted) and promotes
    socket_dir = args.socket_dir or ("/var/run/postgresql" if Path("/var/run/postgresql").is_dir()
                                     else str(pgdata.parent))
    fetch_dir = _make_fetch_dir(args, pgdata, entry.backup_id)
    try:
        copies = usable_copies(entry, source=args.source)
        if not args.debian_cluster:
            write_marker(pgdata, entry.backup_id, args)  # a retry in this run may move this attempt aside
        fetch_s = fetch_objects(entry, copies, fetch_dir, events, _keys(args, cfg, config_path))
        plan, extract_s = restore_files(args, entry, pgdata, fetch_dir, ts_oids, events)
    except BaseBackupInvalid as e:
        raise PitrError(f"base backup {entry.backup_id}: {e.message}", hint="choose another base backup "
                        "(backup_id), and verify this one with `runbook verify-backup --backup ID`") from None
    finally:
        shutil.rmtree(fetch_dir, ignore_errors=True)

    _configure(args, pgdata, plan, config_path, socket_dir, index)
    try:
        recovered = _recover(args, pgdata, socket_dir, entry, copies, plan, events)
    except PitrError as e:
        at_gap = gap is not None and (gap.missing[0] in e.message or "target beyond the archived WAL" in e.message)
        if gap is None or args.accept_gap or not at_gap:
            raise
        raise stopped_at_gap(gap, e, _gap_how()) from None
    _report(args, entry, pgdata, socket_dir, plan, recovered, fetch_s, extract_s, t_begin, events)
    return 0


def _keys(args: Args, cfg: Any, config_path: Path) -> Callable[[], Any]:
    """This host's keys (steps.encrypted.reading.Keys), made when an encrypted copy is met: its identity files
    may be root's or the server user's (the one restore_command reads as that user: steps.crypto.age)."""
    made: list[Any] = []

    def keys() -> Any:
        if not made:
            from steps.encrypted.reading import Keys
            from steps.repository.signing import trust_from_config

            made.append(Keys(cfg, trust_from_config(cfg, allow_unsigned=args.allow_unsigned),
                             allow_unsigned=args.allow_unsigned, config_path=config_path))
        return made[0]

    return keys


def _pick(args: Args, cfg: Any, events: Events) -> tuple[Any, list[str]]:
    """The base backup to recover from (among every repository of the config) and its tablespaces' OIDs."""
    from steps.repository.catalogue import scan, trust_notes
    from steps.repository.configured import open_stores
    from steps.repository.manifest import BaseManifest
    from steps.repository.signing import trust_from_config

    stores = open_stores(cfg, "all")
    cat = scan(stores, trust=trust_from_config(cfg, allow_unsigned=args.allow_unsigned), kinds=("base",))
    for name, err in cat.errors.items():
        events.check(f"{name} repository", "warning", err)

    def say_trust(picked: Any) -> None:
        for name, status, detail in trust_notes(cat, "base", picked=picked, source=args.source):
            events.check(name, status, detail)
            print(f"pitr: {detail}", flush=True)

    try:
        entry = choose_backup(cat.base, args)
    except PitrError:
        say_trust(None)
        raise
    say_trust(entry)
    clusters = sorted({e.cluster for e in cat.base})
    if args.cluster:
        events.check("cluster of the backup", "ok", f"{args.cluster}, as expected")
    elif len(clusters) > 1:
        events.check("cluster of the backup", "warning",
                     f"base backups come from {len(clusters)} clusters ({', '.join(clusters)}): {entry.cluster} "
                     "was chosen by time; set `cluster` (param source_cluster) to the one meant")
    m: BaseManifest = entry.manifest
    ts_oids = backup_tablespace_oids(m)
    events.check("base backup chosen", "ok", f"{entry.backup_id} of cluster {entry.cluster}, ended "
                 f"{entry.time.isoformat()}, {m.size_bytes / 1e6:.1f} MB, {entry.level.name}" +
                 (f", {len(ts_oids)} tablespace(s)" if ts_oids else ""))
    print(f"pitr: base backup {entry.backup_id} (cluster {entry.cluster}, timeline {m.timeline}, ended "
          f"{entry.time.isoformat()}, {', '.join(entry.locations())})", flush=True)
    return entry, ts_oids


def _refuse_early(args: Args, cfg: Any, pgdata: Path, entry: Any, ts_oids: list[str], events: Events) -> None:
    """What can be refused is refused before anything is fetched or created."""
    check_binaries(args, entry.manifest, events)
    if args.debian_cluster:
        precheck_debian(args, pgdata)
    else:
        if not args.check_only:
            earlier_attempt(args, pgdata, events)
        check_empty(pgdata)
    precheck_tablespaces(args, pgdata, ts_oids)
    _check_fetch_root(args, pgdata, entry.manifest.size_bytes)
    check_space(args, pgdata, entry.manifest, Path(args.fetch_dir) if args.fetch_dir else pgdata.parent, events)
    refuse_later_tablespaces(cfg, entry.cluster, entry.backup_id, ts_oids, events)


def _check_ledger_gap(args: Args, cfg: Any, entry: Any, index: Any, events: Events) -> Gap | None:
    """A segment the signed WAL ledgers list as archived but the archive lost (a lost tail, which the listing alone
    cannot show): named before anything is fetched, as a gap (steps.pitr.precheck.ledger_gap)."""
    from steps.wal.store import open_wal_stores

    try:
        stores = open_wal_stores(cfg.local.path if cfg.local else None,
                                 cfg.s3.model_dump(mode="json") if cfg.s3 else None, args.source)
        gap = ledger_gap(stores, entry, index) if stores else None
    except Exception:  # noqa: BLE001 - _check_wal said why the listing failed; the replay checks every segment
        return None
    if gap is not None:
        refuse_beyond_gap(args, gap, events, _gap_how())
    return gap


def _gap_how() -> str:
    run_id = os.environ.get("RUNBOOK_RUN_ID")
    return (f"`runbook resume {run_id} --set target_kind=latest --set accept_gap=true`, then retry this step"
            if run_id else "target_kind latest, accept_gap true")


def _check_wal(args: Args, cfg: Any, entry: Any, events: Events) -> Gap | None:
    """A gap in the archived WAL after the base backup, from the archive's listing: a target proven past it is
    refused before anything is restored, with the best reachable point (steps.pitr.precheck)."""
    from steps.wal.store import open_wal_stores

    if args.restore_command:
        return None  # the WAL is read some other way: the replay finds out
    try:
        stores = open_wal_stores(cfg.local.path if cfg.local else None,
                                 cfg.s3.model_dump(mode="json") if cfg.s3 else None, args.source)
        gap = wal_gap(stores, entry) if stores else None
    except Exception as e:  # noqa: BLE001 - the listing only warns early; the replay checks every segment itself
        events.check("WAL continuity", "warning", f"cannot list the archive: {e}")
        return None
    if gap is None:
        events.check("WAL continuity", "ok", f"the archive's listing shows no gap in the WAL from "
                     f"{entry.manifest.start_wal} on")
        return None
    refuse_beyond_gap(args, gap, events, _gap_how())
    return gap


def _fetch_root(args: Args, pgdata: Path) -> Path:
    """Where the fresh fetch directory is made: `fetch_dir`; else beside the data directory when its parent is
    a real directory owned by root or by us (made 0755 when missing, as the server's socket may go there);
    else (e.g. /var/lib/postgresql/15, the server user's) `$RUNBOOK_SCRATCH_DIR` or /var/tmp, as
    verify-backup's scratch: a directory another user owns is never where the backup is fetched, since that
    user could swap what was fetched before it is extracted."""
    from steps.fs import UnsafePath, check_parent

    if args.fetch_dir:
        return Path(args.fetch_dir)
    beside = pgdata.parent
    if not os.path.lexists(beside):
        os.makedirs(beside, mode=0o755)
    try:
        check_parent(beside)
        return beside
    except UnsafePath:
        return Path(os.environ.get("RUNBOOK_SCRATCH_DIR", "/var/tmp"))


def _check_fetch_root(args: Args, pgdata: Path, size_bytes: int) -> None:
    """The fetch directory's parent is refused before anything is fetched (or made) when it is a symlink or
    another user's (steps.fs.check_parent)."""
    from steps.fs import UnsafePath, check_parent

    root = Path(args.fetch_dir) if args.fetch_dir else None
    if root is None or not os.path.lexists(root):
        return  # the default is chosen safe; a missing fetch_dir is made by private_dir, 0750, ours
    try:
        check_parent(root, "fetch directory's parent (fetch_dir)")
    except UnsafePath as e:
        raise PitrError(e.message, hint=f"set `fetch_dir` to a directory owned by root with room for the base "
                        f"backup ({size_bytes / 1e6:.0f} MB); a fresh private directory is made in it") from None


def _make_fetch_dir(args: Args, pgdata: Path, backup_id: str) -> Path:
    """A fresh private directory (0700, ours: steps.fs.private_dir) for the fetched objects, in `_fetch_root`."""
    from steps.fs import UnsafePath, private_dir

    root = _fetch_root(args, pgdata)
    try:
        fetch_dir = private_dir(root, f".pitr-fetch-{backup_id}-")
    except UnsafePath as e:
        raise PitrError(e.message, hint="set `fetch_dir` to a directory owned by root") from None
    if not args.fetch_dir and root != pgdata.parent:
        print(f"pitr: {pgdata.parent} is not a directory of root's (or ours), another user could swap what is "
              f"fetched there: the backup is fetched into {fetch_dir} instead (set `fetch_dir` to choose)",
              flush=True)
    return fetch_dir


def _configure(args: Args, pgdata: Path, plan: list[TablespacePlan], config_path: Path, socket_dir: str,
               index: Any) -> None:
    """The restored files made ready to recover: pg_wal emptied, tablespace_map rewritten, the verified WAL
    index, the recovery and server settings written (with recovery.signal), everything handed to the server's
    user."""
    from steps.pg.server import give_to_server

    empty_pg_wal(pgdata)
    if plan:
        write_tablespace_map(pgdata, plan)
    verified = write_verified(pgdata, index, args) if index is not None else None
    write_auto_conf(pgdata, recovery_settings(args, config_path, verified), server_settings(args, socket_dir))
    give_to_server(pgdata)
    for p in plan:
        give_to_server(p.directory)
    if args.archive_to:
        if not os.path.lexists(args.archive_to):
            os.makedirs(args.archive_to, mode=0o700)
        give_to_server(Path(args.archive_to))  # refused when it is a link; links in it are not followed


def _recover(args: Args, pgdata: Path, socket_dir: str, entry: Any, copies: list[Any], plan: list[TablespacePlan],
             events: Events) -> Recovered:
    """The server started, the replay watched until promotion, the recovery settings removed, the
    tablespaces checked where the plan put them, the recovery point read from the log."""
    from steps.pg.walnames import parse_lsn

    m = entry.manifest
    log = server_log(args, pgdata)
    end_lsn = archive_end(copies[0].store, entry.cluster, m.wal_segment_size)
    print(f"pitr: starting the restored server on {socket_dir}:{args.port}; replaying to "
          f"{args.target_kind} {args.target}".rstrip(), flush=True)
    t2 = time.monotonic()
    start_server(args, pgdata, log)
    last_ts, last_lsn = watch_recovery(args, pgdata, log, socket_dir, events, parse_lsn(m.start_lsn), end_lsn, t2)
    replay_s = time.monotonic() - t2
    timeline, _current = finish_recovery(args, socket_dir)
    remove_verified(pgdata)
    placed = check_placed(args, pgdata, socket_dir, plan, events)  # also when the backup had none
    recovery_point, lsn = recovery_facts(log, last_ts, last_lsn)
    return Recovered(log, timeline, recovery_point, lsn, replay_s, placed)


def _report(args: Args, entry: Any, pgdata: Path, socket_dir: str, plan: list[TablespacePlan], r: Recovered,
            fetch_s: float, extract_s: float, t_begin: float, events: Events) -> None:
    """The outputs, and what was done in a few lines."""
    recovery_point = r.recovery_point
    events.check("recovery ended", "ok", f"promoted on timeline {r.timeline}; recovery point {recovery_point}")
    if recovery_point is None:
        events.check("recovery point", "warning", "no transaction was replayed after the base backup: the "
                     "recovery point is the backup's end")
        recovery_point = entry.manifest.stopped_at.isoformat()
    events.output("recovery_point", recovery_point)
    events.output("timeline", r.timeline)
    events.output("replay_s", round(r.replay_s, 1))
    events.output("data_directory", str(pgdata))
    events.output("lsn", r.lsn)
    events.output("backup_id", entry.backup_id)
    events.output("cluster", entry.cluster)
    events.output("log_file", str(r.log))
    if plan or r.placed:
        events.output("tablespaces", r.placed)
    print(f"pitr: recovered to {recovery_point} (last replayed transaction), timeline {r.timeline}, redo done at "
          f"{r.lsn}; fetch {fetch_s:.1f} s, restore {extract_s:.1f} s, replay {r.replay_s:.1f} s, total "
          f"{time.monotonic() - t_begin:.1f} s", flush=True)
    print(f"pitr: the restored server runs on {socket_dir}:{args.port} with archiving "
          f"{'to ' + args.archive_to if args.archive_to else 'off'}; re-protect it before the all-clear", flush=True)
