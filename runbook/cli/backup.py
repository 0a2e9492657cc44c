"""The backup side of the command line: `runbook backup`, `runbook backups`, `runbook prune`, `runbook basebackup`.

`register(subparsers)` adds them to `runbook`'s parser. Importing this module stays cheap: boto3,
psycopg and the backup machinery are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from runbook.cli.options import add_allow_unsigned, add_config
from runbook.errors import RunbookError


def register(sub: Any) -> None:
    b = sub.add_parser("backup", help="the daily full backup: dump, verify, publish, local retention")
    add_config(b)
    b.add_argument("--db", action="append", metavar="NAME", help="back up this database (repeatable; "
                   "default: cluster.databases of the config)")
    b.set_defaults(func=cmd_backup)

    c = sub.add_parser("backups", help="the catalogue: every backup, where it is, how verified; the one a recovery picks")
    add_config(c)
    c.add_argument("--json", action="store_true", help="one JSON document: every backup, its copies and levels")
    c.add_argument("--db", metavar="NAME", help="only this database")
    add_allow_unsigned(c)
    c.set_defaults(func=cmd_backups)

    p = sub.add_parser("prune", help="apply retention to every repository (off-site included)")
    add_config(p)
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    p.add_argument("--only", choices=["local", "s3"], help="one repository only")
    add_allow_unsigned(p)
    p.set_defaults(func=cmd_prune)


def register_basebackup(sub: Any) -> None:
    b = sub.add_parser("basebackup", help="physical base backup for PITR: pg_basebackup, verified against its "
                       "manifest and the WAL archive, published with manifest.json last")
    add_config(b)
    b.add_argument("--compress", metavar="METHOD", help="override basebackup.compression "
                   "(pg_basebackup -Z: server-zstd:level=1, server-lz4, client-zstd, none, ...)")
    b.add_argument("--type", dest="backup_type", choices=["full", "diff", "incr"],
                   help="engine: pgbackrest: pgbackrest backup --type (default: pgBackRest's, incr after a full); "
                        "the product's own engine takes full backups only")
    b.add_argument("--quiet", action="store_true", help="only the result line and errors on the console")
    b.set_defaults(func=cmd_basebackup)


def cmd_backup(args: argparse.Namespace) -> int:
    from steps.backup.logical import EXIT_CANNOT_RUN, BackupRun
    from steps.repository.config import load_repository_config

    try:
        cfg, path = load_repository_config(args.config)
    except RunbookError as e:
        print(f"runbook: backup could not run: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return BackupRun(cfg, path, args.db).run()


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m = s // 60
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def cmd_backups(args: argparse.Namespace) -> int:
    from steps.repository.catalogue import pick, scan
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.signing import trust_from_config

    cfg, _ = load_repository_config(args.config)
    trust = trust_from_config(cfg, allow_unsigned=args.allow_unsigned)
    now = datetime.now(UTC)
    stores, errors = [], {}
    for which in ("local", "s3"):
        if getattr(cfg, which) is None:
            continue
        try:
            stores += open_stores(cfg, which)  # type: ignore[arg-type]
        except RunbookError as err:
            errors[which] = str(err)
    cat = scan(stores, trust=trust, db=args.db, kinds=("logical", "files", "base"))
    errors.update(cat.errors)
    pgbr = None
    if cfg.engine == "pgbackrest":  # the base backups and the WAL archive are pgBackRest's
        from steps.engines.pgbackrest.records import listed

        cat.base = []
        try:
            pgbr = listed(cfg, stores, trust)
            cat.base = pgbr.base
        except RunbookError as err:
            errors["pgbackrest"] = str(err)
    picks = {db: pick(cat.entries, db) for db in cat.databases()}
    picked_ids = {id(e) for e in picks.values() if e is not None}
    wrapped: dict[tuple[str, str], list[str]] = {}
    if any(e.encrypted() for e in cat.entries + cat.files + cat.base):
        from steps.encrypted.reading import recipients_now

        wrapped = recipients_now(stores, trust)
    if args.json:
        doc = _catalogue_json(cat, picks, picked_ids, errors, stores, now, wrapped)
        if pgbr is not None:
            doc["pgbackrest"] = _pgbackrest_json(pgbr)
        print(json.dumps(doc, indent=2))
        return 1 if errors else 0
    for name, msg in errors.items():
        print(f"runbook: the {name} repository could not be read: {msg}", file=sys.stderr)
    if not cat.entries:
        print(("no logical backups" if cat.base else "no backups") + (f" of {args.db}" if args.db else "") + " in " + ", ".join(s.describe() for s in stores))
    else:
        print(f"  {'DATABASE':20} {'BACKUP':17} {'SNAPSHOT (UTC)':20} {'AGE':>7} {'SIZE':>10}  {'LEVEL':11} {'WHERE':9} CLUSTER")
        for e in cat.entries:
            mark = "*" if id(e) in picked_ids else " "
            where = ",".join(e.locations())
            when = e.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            level = e.level.name if not any(c.failed for c in e.copies.values()) else f"{e.level.name}!"
            print(f"{mark} {e.db:20} {e.backup_id:17} {when:20} {_age((now - e.time).total_seconds()):>7} "
                  f"{_mb(e.size_bytes):>10}  {level:11} {where:9} {e.cluster}")
            for line in encryption_lines(e, wrapped):
                print(line)
        print("* = what a recovery picks: the newest backup of each database at readable or better")
        if any(e.encrypted() for e in cat.entries):
            print("backups without an `encrypted` line are stored in clear (`--json` names each copy's epoch)")
        if any(c.failed for e in cat.entries for c in e.copies.values()):
            print("! after a level = its latest verification FAILED (runbook verify-backup): that copy is not "
                  "picked until a later verification passes")
        for db, chosen in picks.items():
            if chosen is None:
                print(f"! {db}: no backup at readable or better: a recovery has nothing to start from")
    if pgbr is not None:
        _print_pgbackrest(pgbr, now, wrapped)
    elif cat.base:
        _print_base(cat.base, now, wrapped)
        _print_wal(stores, sorted({e.cluster for e in cat.base}))
    if cat.files:
        newest = cat.files[0]
        n = len(getattr(newest.manifest, "files", []))
        print(f"attachments: {len(cat.files)} snapshots; newest {newest.backup_id} ({n} files, "
              f"{_mb(newest.size_bytes)}, {','.join(newest.locations())})")
        for line in encryption_lines(newest, wrapped):
            print(line)
    if cat.incomplete:
        print(f"{len(cat.incomplete)} incomplete backup directories (interrupted; `runbook prune` removes them "
              "after a day)")
    for r in cat.refused:
        print(f"! refused, not genuine: {r.describe()}: {r.reason}")
    if cat.refused:
        print("a backup refused is never picked, counted or pruned: look at it (a forgery is evidence)")
    for u in cat.unsigned():
        print(f"runbook: warning: unsigned {u} accepted because --allow-unsigned", file=sys.stderr)
    return 1 if errors else 0


def encryption_lines(e: Any, now: dict[tuple[str, str], list[str]] | None = None, indent: str = "    ",
                     width: int = 80) -> list[str]:
    """Under a backup's row: which copies are encrypted, and to whom (count and short ids: whom the epoch is
    wrapped for now when `now` knows it, else the manifest's), each line within `width` columns; nothing for a
    backup stored in clear everywhere."""
    from steps.encrypted.reading import describe_recipients

    encrypted = e.encrypted()
    if not encrypted:
        return []
    clear = [n for n in e.locations() if n not in encrypted]
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, enc in encrypted.items():
        groups.setdefault(tuple((now or {}).get((name, enc.epoch), enc.recipients)), []).append(name)
    lines = []
    for recipients, names in groups.items():
        head = f"{indent}encrypted in {','.join(names)}" + (f" ({','.join(clear)} in clear)" if clear else "") + ": "
        lines.append(head + describe_recipients(list(recipients), width - len(head)))
    return lines


def _catalogue_json(cat: Any, picks: dict[str, Any], picked_ids: set[int], errors: dict[str, str],
                    stores: list[Any], now: datetime, wrapped: dict[tuple[str, str], list[str]]) -> dict[str, Any]:
    def encryption(name: str, enc: Any) -> dict[str, Any] | None:
        if enc is None:
            return None
        return enc.model_dump(mode="json") | {"recipients_now": wrapped.get((name, enc.epoch))}

    def entry(b: Any) -> dict[str, Any]:
        return {
            "kind": b.kind, "backup_id": b.backup_id, "db": b.db or None, "cluster": b.cluster or None,
            "time": b.time.isoformat(), "age_s": round((now - b.time).total_seconds()), "size_bytes": b.size_bytes,
            "level": b.level.name, "locations": b.locations(),
            "copies": {n: {"level": c.level.name, "verified_at": c.verified_at.isoformat() if c.verified_at else None,
                           "failed_at": c.failed.checked_at.isoformat() if c.failed else None,
                           "path": c.prefix,
                           "encryption": encryption(n, c.encryption)}
                       for n, c in b.copies.items()},
            "encrypted": sorted(b.encrypted()),
            "picked": id(b) in picked_ids,
        }

    return {
        "generated_at": now.isoformat(),
        "repositories": {s.name: {"where": s.describe(), "error": errors.get(s.name)} for s in stores}
        | {n: {"where": None, "error": m} for n, m in errors.items() if n not in {s.name for s in stores}},
        "backups": [entry(e) for e in cat.entries],
        "picks": {db: (b.backup_id if b else None) for db, b in picks.items()},
        "attachments": [entry(e) for e in cat.files],
        "base_backups": [entry(e) | _base_json(e) for e in cat.base],
        "incomplete": [{"repository": i.store.name, "path": i.prefix, "reason": i.reason} for i in cat.incomplete],
        "refused": [{"repository": r.store.name, "kind": r.kind, "backup_id": r.backup_id, "db": r.db or None,
                     "cluster": r.cluster or None, "path": r.prefix, "reason": r.reason} for r in cat.refused],
        "unsigned_accepted": cat.unsigned(),
    }


def _pgbackrest_json(got: Any) -> dict[str, Any]:
    st, rng = got.stanza, got.archive
    return {"stanza": st.name, "status": st.status_message, "system_identifier": st.system_identifier,
            "archive": None if rng is None else {
                "min_wal": rng.min_wal, "max_wal": rng.max_wal,
                "newest_archived_at": rng.newest_archived_at.isoformat() if rng.newest_archived_at else None},
            "refused_records": [{"repository": n, "key": k, "reason": why} for n, k, why in got.refused]}


def _print_pgbackrest(got: Any, now: datetime, wrapped: dict[tuple[str, str], list[str]]) -> None:
    """engine: pgbackrest: its backups in the base backup table (TYPE instead of nothing: full, diff, incr), and
    its archive's range."""
    st, rng = got.stanza, got.archive
    if got.base:
        _print_base(got.base, now, wrapped)
        for e in got.base:
            m = e.manifest
            if m.reference:
                print(f"  {e.backup_id}: {m.kind}, needs {', '.join(m.reference)}")
    else:
        print(f"! no pgBackRest backup of stanza {st.name}: point-in-time recovery has nothing to start from")
    if rng is None or rng.max_wal is None:
        print(f"! WAL of {st.system_identifier} in pgbackrest (stanza {st.name}): none archived: no PITR past a "
              "backup's end")
    else:
        when = "" if rng.newest_archived_at is None else \
            f", the newest archived {_age((now - rng.newest_archived_at).total_seconds())} ago"
        print(f"WAL of {st.system_identifier} in pgbackrest (stanza {st.name}): {rng.min_wal} .. {rng.max_wal}{when}")
    for n, k, why in got.refused:
        print(f"! refused, not genuine: {n}: {k}: {why}")


def _base_json(e: Any) -> dict[str, Any]:
    m = e.manifest
    if not hasattr(m, "backup"):  # a pgBackRest backup (steps.engines.pgbackrest.records.BaseFacts)
        return {"timeline": m.timeline, "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn, "start_wal": m.start_wal,
                "stop_wal": m.stop_wal, "started_at": m.started_at.isoformat(),
                "stopped_at": m.stopped_at.isoformat(), "wal_segment_size": m.wal_segment_size, "type": m.kind,
                "reference": list(m.reference), "engine": "pgbackrest"}
    return {"timeline": m.timeline, "start_lsn": m.start_lsn, "stop_lsn": m.stop_lsn, "start_wal": m.start_wal,
            "stop_wal": m.stop_wal, "started_at": m.started_at.isoformat(), "stopped_at": m.stopped_at.isoformat(),
            "wal_segment_size": m.wal_segment_size, "compression": m.backup.compression,
            "server_version": m.cluster.server_version}


def _print_base(entries: list[Any], now: datetime, wrapped: dict[tuple[str, str], list[str]]) -> None:
    """Base backups: a PITR can reach any moment after a backup's end, as far as the archived WAL goes."""
    w = max([17] + [len(e.backup_id) for e in entries])  # pgBackRest's labels of diff and incr backups: 33
    ww = max([9] + [len(",".join(e.locations())) for e in entries])  # "pgbackrest"
    print(f"  {'BASE BACKUP':{w}} {'ENDED (UTC)':20} {'AGE':>7} {'SIZE':>10}  {'LEVEL':11} {'WHERE':{ww}} "
          f"{'TL':>3} {'WAL FROM':24} CLUSTER")
    for e in entries:
        m = e.manifest
        when = e.time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"  {e.backup_id:{w}} {when:20} {_age((now - e.time).total_seconds()):>7} {_mb(e.size_bytes):>10}  "
              f"{e.level.name:11} {','.join(e.locations()):{ww}} {m.timeline:>3} {m.start_wal:24} {e.cluster}")
        for line in encryption_lines(e, wrapped):
            print(line)
    print("a point-in-time recovery starts from the newest readable base backup that ended before its target")


def _print_wal(stores: list[Any], clusters: list[str]) -> None:
    """The archived WAL range of each cluster with base backups: how far a PITR can go."""
    from steps.repository.layout import archived_segment, wal_prefix

    for store in stores:
        for sysid in clusters:
            try:
                segs = sorted(s for k, _ in store.list_keys(wal_prefix(sysid)) if (s := archived_segment(k)))
            except RunbookError as e:
                print(f"WAL of {sysid} in {store.name}: cannot list: {e}")
                continue
            if segs:
                print(f"WAL of {sysid} in {store.name}: {len(segs)} segments, {segs[0]} .. {segs[-1]}")
            else:
                print(f"! WAL of {sysid} in {store.name}: none archived: no PITR past a base backup's end")


def cmd_prune(args: argparse.Namespace) -> int:
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.prune import prune_base, prune_store
    from steps.repository.signing import trust_from_config

    cfg, _ = load_repository_config(args.config)
    trust = trust_from_config(cfg, allow_unsigned=args.allow_unsigned)
    if args.allow_unsigned:
        print("runbook: warning: --allow-unsigned: unsigned backups are counted by retention like signed ones "
              "(and deleted when it says so)", file=sys.stderr)
    now = datetime.now(UTC)
    code = 0
    for which in ("local", "s3"):
        if getattr(cfg, which) is None or (args.only and args.only != which):
            continue
        try:
            store = open_stores(cfg, which, for_prune=True)[0]  # type: ignore[arg-type]
            report = prune_store(store, cfg.retention, trust=trust, now=now, dry_run=args.dry_run)
            base = prune_base(store, cfg.retention, trust=trust, now=now, dry_run=args.dry_run)
            report.kept += base.kept
            report.deleted += base.deleted
        except RunbookError as e:
            print(f"runbook: prune of the {which} repository failed: {e}", file=sys.stderr)
            code = 1
            continue
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{report.repository}: kept {len(report.kept)}, {verb} {len(report.deleted)}")
        for what, why in report.deleted:
            print(f"  {verb} {what}: {why}")
        for what, why in report.kept:
            print(f"  kept {what}: {why}")
    return code


def cmd_basebackup(args: argparse.Namespace) -> int:
    from steps.backup.base import BaseBackupRun
    from steps.backup.logical import EXIT_CANNOT_RUN
    from steps.repository.config import load_repository_config

    try:
        cfg, path = load_repository_config(args.config)
        if args.compress:
            bb = cfg.basebackup.model_validate({**cfg.basebackup.model_dump(), "compression": args.compress})
            cfg = cfg.model_copy(update={"basebackup": bb})
    except (RunbookError, ValueError) as e:
        print(f"runbook: basebackup could not run: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if cfg.engine == "pgbackrest" and cfg.pgbackrest is not None:  # the config requires the block with it
        from steps.engines.pgbackrest.backup import run_basebackup

        if args.compress:
            print("runbook: basebackup could not run: --compress is pg_basebackup's; with engine: pgbackrest set "
                  "compress-type in pgbackrest.options or its pgbackrest.conf", file=sys.stderr)
            return EXIT_CANNOT_RUN
        if not args.quiet:
            print(f"basebackup: pgbackrest backup of stanza {cfg.pgbackrest.stanza}"
                  + (f" --type={args.backup_type}" if args.backup_type else " (its default type)"), flush=True)
        out = run_basebackup(cfg, path, args.backup_type)
        if out.done is None:
            what = "could not run" if out.cannot_run else "failed (nothing new published)"
            print(f"runbook: basebackup {what}: {out.error}" + (f"\n  hint: {out.hint}" if out.hint else ""),
                  file=sys.stderr)
            return out.exit_code
        b = out.done.backup
        ref = f", on {b.reference[-1]}" if b.reference else ""
        stored = "" if b.stored_bytes is None else f" ({_mb(b.stored_bytes)} stored)"
        print(f"base {b.label}: ok, {b.kind}{ref}, {_mb(b.size_bytes)}{stored}, readable in pgbackrest "
              f"(pgbackrest backup {out.done.duration_s:.1f} s), WAL {b.start_wal} .. {b.stop_wal}")
        return out.exit_code
    if args.backup_type not in (None, "full"):
        print(f"runbook: basebackup could not run: --type {args.backup_type} needs engine: pgbackrest (the "
              "product's own engine takes full base backups only)", file=sys.stderr)
        return EXIT_CANNOT_RUN
    return BaseBackupRun(cfg, path, console=not args.quiet).run()
