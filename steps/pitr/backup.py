"""The base backup a recovery starts from: which one (`choose_backup`), its objects fetched with their
sha256 checked (`fetch_objects`, from the first copy that serves them), and its tars extracted into the new
data directory and the tablespaces' directories, every file checked against the server's backup_manifest
(`restore_files`; `pg_wal` is left empty)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from steps.events import Events
from steps.pitr.args import Args, parse_target_time
from steps.pitr.datadir import prepare_bare, prepare_debian
from steps.pitr.errors import PitrError
from steps.pitr.tablespaces import (
    TablespacePlan,
    make_tablespace_dirs,
    plan_tablespaces,
    read_tablespace_facts,
)


def choose_backup(entries: list[Any], args: Args) -> Any:
    """The base backup to start from, or a PitrError that says why none fits."""
    from steps.pg.walnames import parse_lsn
    from steps.repository.catalogue import pick_base, usable_copies

    pool = [e for e in entries if args.cluster is None or e.cluster == args.cluster]
    usable = [e for e in pool if usable_copies(e, source=args.source)]
    others = sorted({e.cluster for e in entries} - {args.cluster}) if args.cluster else []
    if not pool and others:
        raise PitrError(f"no base backup of cluster {args.cluster}, the one this recovery expects: the repository "
                        f"holds base backups of {', '.join(others)} only",
                        hint="the server or sandbox was rebuilt (a new system identifier), or the expected cluster "
                             "(param source_cluster) is wrong; nothing was changed")
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


def fetch_objects(entry: Any, copies: list[Any], fetch_dir: Path, events: Events,
                  keys: Callable[[], Any] | None = None) -> float:
    """Every object of the backup into `fetch_dir`, sha256 checked as it streams, from the first of `copies`
    that serves them all; returns the seconds it took. Each copy is read by its own manifest (re-read, and the
    one the catalogue verified): a copy stored encrypted is opened with `keys()` (steps.encrypted.reading.Keys)
    before anything is fetched, and each object decrypted while it streams (stored sha256, age's authentication,
    plaintext sha256); a wrong key, an altered or truncated object are named, and the next copy is tried."""
    import hashlib

    from steps.repository import layout
    from steps.repository.manifest import parse_base
    from steps.repository.store import CorruptObject

    t0 = time.monotonic()
    last_err: Exception | None = None
    for copy in copies:
        try:
            data = copy.store.get_bytes(copy.prefix + layout.MANIFEST)
            if hashlib.sha256(data).hexdigest() != copy.manifest_sha256:
                raise CorruptObject(copy.store.describe(), copy.prefix + layout.MANIFEST,
                                    f"sha256 {copy.manifest_sha256} (as verified)", "other bytes: it changed since")
            m = parse_base(data)
            opener = None
            if m.encryption is not None:
                if keys is None:
                    raise RunbookError(f"{copy.store.describe()}: base backup {entry.backup_id} is encrypted, and "
                                       "no keys were given")
                opener = keys().opener(copy.store, m, f"base backup {entry.backup_id} in {copy.store.describe()}")
            total = m.stored_bytes
            done = [0]

            def progress(n: int, total: int = total, done: list[int] = done) -> None:
                done[0] += n
                events.progress(round(done[0] / 1e6, 1), round(total / 1e6, 1), "MB", "fetching the base backup")

            for o in m.objects:
                copy.store.fetch_file(copy.prefix + m.stored_key(o), fetch_dir / o.path, size=o.size,
                                      sha256=o.sha256, progress=progress,
                                      decoding=opener.decoding(o) if opener is not None else None)
            last_err = None
            how = f"decrypted (epoch {m.encryption.epoch}), " if m.encryption is not None else ""
            events.check("fetched", "ok", f"{len(m.objects)} objects from {copy.store.describe()}, {how}"
                         "sha256 checked")
            break
        except RunbookError as e:
            last_err = e
            events.check(f"fetch from {copy.store.name}", "warning", str(e))
    if last_err is not None:
        raise last_err
    return time.monotonic() - t0


def restore_files(args: Args, entry: Any, pgdata: Path, fetch_dir: Path, ts_oids: list[str],
                  events: Events) -> tuple[list[TablespacePlan], float]:
    """The fetched tars extracted: the data directory made (or the Debian cluster), each tablespace's
    directory made as planned, every file checked against the server's backup_manifest, `pg_wal` skipped.
    Returns the tablespace plan and the seconds the extraction took. Raises BaseBackupInvalid."""
    from steps.backup.basetar import (
        TABLESPACE_MAP,
        check_tars,
        parse_server_manifest,
        parse_tablespace_map,
        tablespace_oids,
        tar_files,
    )
    from steps.repository.layout import BACKUP_MANIFEST

    plan: list[TablespacePlan] = []
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
        prepare_debian(args, pgdata)
    else:
        prepare_bare(pgdata)
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
    return plan, extract_s
