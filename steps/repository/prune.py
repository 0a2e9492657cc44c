"""Applying retention to a repository: `backup` does it for the local repository after a success,
`runbook prune` for every configured repository (off-site included, with its own credentials).

Each repository keeps its own last good copy: the plan (steps.repository.retention) is made from the levels of the
copies *in that repository*. A backup is deleted manifest first, so a half-deleted backup is never listed;
then its verification records, then its objects. Incomplete directories (no manifest) older than a day
are removed too (a day, so a backup being written right now is never touched). A backup the catalogue refuses
(not genuine: unsigned, badly signed, from the future) is neither counted nor deleted: it is reported as kept,
with the reason, for a person to look at (an attacker's forgery is evidence; an old unsigned backup is pruned
with `--allow-unsigned`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from steps.repository import layout
from steps.repository.catalogue import Catalogue, Entry, Kind, Refused, scan
from steps.repository.config import RetentionConfig
from steps.repository.manifest import Level
from steps.repository.retention import Item, plan
from steps.repository.signing import Trust
from steps.repository.store import RepositoryError, Store

log = logging.getLogger("runbook.prune")

INCOMPLETE_GRACE = timedelta(days=1)
ATTACHMENTS = "attachments"


@dataclass
class PruneReport:
    repository: str
    kept: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    deleted: list[tuple[str, str]] = field(default_factory=list)


def _series(entries: list[Entry], store: Store) -> dict[tuple[str, str], list[Entry]]:
    """(kind, database) -> its backups in this store; the attachments are one series of their own."""
    out: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if store.name in e.copies:
            out.setdefault((e.kind, e.db), []).append(e)
    return out


def _delete_order(prefix: str, keys: list[str]) -> list[str]:
    manifest = prefix + layout.MANIFEST
    records = sorted(k for k in keys if k.startswith(prefix + layout.VERIFICATIONS + "/"))
    rest = sorted(k for k in keys if k != manifest and k not in records)
    return ([manifest] if manifest in keys else []) + records + rest


def _refused(cat: Catalogue, store: Store, report: PruneReport, wanted: Callable[[Refused], bool]) -> None:
    for r in cat.refused:
        if r.store is store and wanted(r):
            report.kept.append((r.prefix, f"not genuine ({r.reason}): never counted nor deleted by retention"))


def prune_store(store: Store, retention: RetentionConfig, *, trust: Trust, now: datetime, dry_run: bool = False,
                db: str | None = None, logical: bool = True, files: bool = True,
                catalogue: Catalogue | None = None) -> PruneReport:
    """Apply retention to one repository: the logical backups (of `db`, or all) and/or the attachments.

    Raises RepositoryError.
    """
    kinds: list[Kind] = []
    if logical:
        kinds.append("logical")
    if files:
        kinds.append("files")
    cat = catalogue or scan([store], trust=trust, db=db, kinds=tuple(kinds))
    if store.name in cat.errors:
        from steps.repository.store import RepositoryError

        raise RepositoryError(cat.errors[store.name])
    report = PruneReport(repository=store.describe())
    entries = ([e for e in cat.entries if db is None or e.db == db] if logical else []) + (cat.files if files else [])
    for (kind, name), items in sorted(_series(entries, store).items()):
        series = name if kind == "logical" else ATTACHMENTS
        by_prefix = {e.copies[store.name].prefix: e for e in items}
        # Attachments are at most checksummed (their files were hashed as archived); dumps must be readable.
        good = Level.checksummed if kind == "files" else Level.readable
        p = plan([Item(pfx, e.time, e.copies[store.name].level) for pfx, e in by_prefix.items()],
                 now=now, keep_last=retention.keep_last, keep_days=retention.keep_days, min_good=good)
        for pfx, why in p.keep.items():
            report.kept.append((f"{series} {by_prefix[pfx].backup_id}", why))
        for pfx, why in sorted(p.delete.items()):
            report.deleted.append((f"{series} {by_prefix[pfx].backup_id}", why))
            log.info("%s: %s %s: %s", "would delete" if dry_run else "deleting", series, by_prefix[pfx].backup_id, why)
            if not dry_run:
                store.delete(_delete_order(pfx, by_prefix[pfx].copies[store.name].keys))
    for inc in cat.incomplete:
        is_files = inc.prefix.startswith("files/")
        wanted = (files and is_files) or (logical and not is_files and (db is None or f"/logical/{db}/" in inc.prefix))
        if inc.store is not store or not wanted:
            continue
        if not layout.is_id(inc.backup_id) or now - layout.parse_id(inc.backup_id) < INCOMPLETE_GRACE:
            continue
        report.deleted.append((inc.prefix, f"incomplete ({inc.reason}), older than a day"))
        log.info("%s incomplete %s", "would delete" if dry_run else "deleting", inc.prefix)
        if not dry_run:
            store.delete(_delete_order(inc.prefix, inc.keys))
    _refused(cat, store, report, lambda r: r.kind in kinds and (db is None or r.kind != "logical" or r.db == db))
    return report


# --- base backups and the WAL they need --------------------------------------------------------------


def wal_to_delete(keys: list[str], kept_starts: list[tuple[str, int]], segment_size: int) -> list[str]:
    """Archive keys older than every kept base backup's start: `kept_starts` is (start segment, segment size)
    of each kept base backup. Segments (and `.backup` files) whose segment number is below the oldest kept
    start go; `.history` files always stay (they are tiny and recovery needs them to follow timelines).
    With no kept base backup nothing goes: WAL is then the only way to recover anything."""
    from steps.pg.walnames import parse_segment

    if not kept_starts:
        return []
    cutoff = min(parse_segment(start, size)[1] for start, size in kept_starts)
    out = []
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        head = name[:24]
        if len(head) < 24 or ".history" in name:
            continue
        try:
            _tli, segno = parse_segment(head, segment_size)
        except ValueError:
            continue
        if segno < cutoff:
            out.append(key)
    return out


def ledgers_to_delete(store: Store, sysid: str, kept_starts: list[tuple[str, int]], segment_size: int) -> list[str]:
    """The signed WAL ledgers (steps.wal.ledger) every file of which `wal_to_delete` deletes: their last file is
    before the oldest kept start (read from the key, so the others are never read), and none is a `.history`
    file (those stay, so their ledgers stay too). A ledger that cannot be read is kept."""
    import json

    from steps.pg.walnames import parse_segment

    if not kept_starts:
        return []
    cutoff = min(parse_segment(start, size)[1] for start, size in kept_starts)
    prefix = layout.wal_ledger_prefix(sysid)
    out = []
    for key, _ in store.list_keys(prefix):
        last = layout.wal_ledger_last(key)
        try:
            if last is None or parse_segment(last, segment_size)[1] >= cutoff:
                continue
        except ValueError:
            continue
        try:
            names = [str(f[0]) for f in json.loads(store.get_bytes(key))["files"]]
        except (ValueError, KeyError, TypeError, IndexError, RepositoryError):
            continue
        if names and len(wal_to_delete(names, kept_starts, segment_size)) == len(names):
            out.append(key)
    return out


def prune_base(store: Store, retention: RetentionConfig, *, trust: Trust, now: datetime, dry_run: bool = False,
               catalogue: Catalogue | None = None) -> PruneReport:
    """Retention for base backups, per cluster (same keep_last/keep_days as the logical backups, and the
    newest `readable` one always kept), then the WAL no kept base backup needs. Raises RepositoryError."""
    from steps.repository.manifest import BaseManifest
    from steps.repository.store import RepositoryError

    cat = catalogue or scan([store], trust=trust, kinds=("base",))
    if store.name in cat.errors:
        raise RepositoryError(cat.errors[store.name])
    report = PruneReport(repository=store.describe())
    clusters: dict[str, list[Entry]] = {}
    for e in cat.base:
        if store.name in e.copies:
            clusters.setdefault(e.cluster, []).append(e)
    for sysid, items in sorted(clusters.items()):
        by_prefix = {e.copies[store.name].prefix: e for e in items}
        p = plan([Item(pfx, e.time, e.copies[store.name].level) for pfx, e in by_prefix.items()],
                 now=now, keep_last=retention.keep_last, keep_days=retention.keep_days, min_good=Level.readable)
        for pfx, why in p.keep.items():
            report.kept.append((f"base {sysid} {by_prefix[pfx].backup_id}", why))
        for pfx, why in sorted(p.delete.items()):
            report.deleted.append((f"base {sysid} {by_prefix[pfx].backup_id}", why))
            log.info("%s: base %s %s: %s", "would delete" if dry_run else "deleting", sysid,
                     by_prefix[pfx].backup_id, why)
            if not dry_run:
                store.delete(_delete_order(pfx, by_prefix[pfx].copies[store.name].keys))
        kept = [by_prefix[pfx].manifest for pfx in p.keep]
        starts = [(m.start_wal, m.wal_segment_size) for m in kept if isinstance(m, BaseManifest)]
        if not starts:
            continue
        size = starts[0][1]
        keys = [k for k, _ in store.list_keys(layout.wal_prefix(sysid))]
        old = wal_to_delete(keys, starts, size)
        if old:
            oldest = min(starts, key=lambda s: s[0][8:])[0]
            report.deleted.append((f"wal {sysid}: {len(old)} files before {oldest}",
                                   "older than the oldest kept base backup's start segment"))
            log.info("%s %d WAL files of %s before %s", "would delete" if dry_run else "deleting", len(old), sysid,
                     oldest)
            if not dry_run:
                store.delete(sorted(old))
                # The claims of the files deleted (steps.wal.archive.push_one) go with them.
                gone = {n for k in old if (n := layout.wal_name_from_key(k))}
                root = layout.wal_claims_root(sysid)
                claims = [k for k, _ in store.list_keys(root) if k[len(root):].split("/", 1)[0] in gone]
                if claims:
                    store.delete(sorted(claims))
        ledgers = ledgers_to_delete(store, sysid, starts, size)
        if ledgers:
            report.deleted.append((f"wal {sysid}: {len(ledgers)} WAL ledger(s)",
                                   "every file they sign is older than the oldest kept base backup's start"))
            if not dry_run:
                store.delete(sorted(ledgers + [k + ".sig" for k in ledgers]))
    for inc in cat.incomplete:
        if inc.store is not store or "/base/" not in inc.prefix:
            continue
        if not layout.is_id(inc.backup_id) or now - layout.parse_id(inc.backup_id) < INCOMPLETE_GRACE:
            continue
        report.deleted.append((inc.prefix, f"incomplete ({inc.reason}), older than a day"))
        if not dry_run:
            store.delete(_delete_order(inc.prefix, inc.keys))
    _refused(cat, store, report, lambda r: r.kind == "base")
    return report
