"""The catalogue: which backups exist in which repositories, at which verification level.

A backup exists in a repository when its `manifest.json` does; its level there is the highest level of
the passed verification records that vouch for that very manifest (by sha256). Copies of one backup
(same cluster, database and id) in several repositories are merged into one entry with its locations.
Directories without a manifest are incomplete (an interrupted backup): never listed as backups, only
reported so that `prune` can remove them. A repository that cannot be read is reported, not fatal.

`pick` answers the recovery's question: the newest backup of a database at `readable` or better. A copy
whose latest verification record failed (verify-backup's test restore, a checksum) is demoted to `none`
until a later check passes: recovery never picks it.

Only genuine backups are listed (steps.repository.signing: every scan is given the `Trust` of the host that
reads). A copy whose manifest is unsigned, badly signed or signed by a key this host does not trust, or whose
time (snapshot, creation, stop) is in the future beyond the clock skew, is `refused`: named with the reason,
never picked, never counted by retention and never deleted by it, so the newest genuine backup is what a
recovery gets. A verification record or run summary that is not genuine vouches for nothing (ignored, counted in
`refused_records`). With `allow_unsigned` (a repository written before signing), unsigned manifests older than
the first signed backup of their series, and their unsigned records, are accepted, and each copy says which keys
it accepted unsigned (`Copy.unsigned`), for the warning callers give; an unsigned backup newer than that, or an
unsigned record of a signed backup, is refused all the same (a forger's way in once signing started).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

from pydantic import ValidationError

from steps.repository import layout
from steps.repository.manifest import (
    BaseManifest,
    Encryption,
    FilesManifest,
    Level,
    LogicalManifest,
    VerificationRecord,
    invalid_reason,
    parse_base,
    parse_files,
    parse_logical,
    parse_verification,
    sha256_bytes,
)
from steps.repository.signing import SIG_SUFFIX, Trust, future, signature_keys
from steps.repository.store import RepositoryError, Store

Kind = Literal["logical", "files", "base"]


@dataclass
class Copy:
    """One backup in one repository."""

    store: Store
    prefix: str
    manifest_sha256: str
    level: Level
    records: list[VerificationRecord]
    keys: list[str]
    unsigned: list[str] = field(default_factory=list)  # keys accepted without a signature (allow_unsigned)
    encryption: Encryption | None = None  # this copy's manifest's: how its repository stores the objects

    @property
    def verified_at(self) -> datetime | None:
        passed = [r.checked_at for r in self.records if r.passed and r.manifest_sha256 == self.manifest_sha256]
        return max(passed) if passed else None

    def latest_record(self, level: Level | None = None) -> VerificationRecord | None:
        """The newest record vouching for (or failing) this manifest, of `level` when given."""
        mine = [r for r in self.records if r.manifest_sha256 == self.manifest_sha256
                and (level is None or Level.parse(r.level) == level)]
        return max(mine, key=lambda r: r.checked_at) if mine else None

    @property
    def failed(self) -> VerificationRecord | None:
        """The latest record, when it failed: the copy is demoted until a later check passes."""
        last = self.latest_record()
        return last if last is not None and not last.passed else None


@dataclass
class Entry:
    kind: Kind
    backup_id: str
    db: str  # "" for files and base backups
    cluster: str  # system identifier; "" for files
    time: datetime  # snapshot time (logical), creation time (files), stop time (base: the earliest target)
    size_bytes: int
    manifest: LogicalManifest | FilesManifest | BaseManifest
    copies: dict[str, Copy] = field(default_factory=dict)

    @property
    def level(self) -> Level:
        return max((c.level for c in self.copies.values()), default=Level.none)

    def locations(self) -> list[str]:
        return [name for name in ("local", "s3") if name in self.copies]

    def encrypted(self) -> dict[str, Encryption]:
        """The copies stored encrypted, by repository (local first): each repository's manifest says its own."""
        return {n: enc for n in self.locations() if (enc := self.copies[n].encryption) is not None}

    def unsigned(self, source: str = "any") -> list[str]:
        """What of this backup was accepted unsigned (allow_unsigned), in `source`: "local: manifest.json", ..."""
        return [f"{n}: {k[len(c.prefix):]}" for n, c in self.copies.items() if source in ("any", n)
                for k in c.unsigned]

    def describe(self) -> str:
        return f"{self.kind} backup {self.backup_id}" + (f" of {self.db}" if self.db else "")


@dataclass
class Refused:
    """A copy of a backup that is not genuine: never listed, picked, counted by retention nor deleted by it."""

    store: Store
    prefix: str
    kind: Kind
    backup_id: str
    db: str
    cluster: str
    reason: str

    def describe(self) -> str:
        return (f"{self.kind} backup {self.backup_id}" + (f" of {self.db}" if self.db else "")
                + f" in {self.store.name} ({self.prefix})")


@dataclass
class Incomplete:
    store: Store
    prefix: str
    keys: list[str]
    reason: str

    @property
    def backup_id(self) -> str:
        return self.prefix.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Catalogue:
    entries: list[Entry] = field(default_factory=list)  # logical backups, newest first
    files: list[Entry] = field(default_factory=list)  # attachments snapshots, newest first
    base: list[Entry] = field(default_factory=list)  # physical base backups, newest first
    incomplete: list[Incomplete] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # repository name -> why it could not be read
    refused: list[Refused] = field(default_factory=list)  # copies that are not genuine, newest id first
    refused_records: list[tuple[str, str, str]] = field(default_factory=list)  # (repository, key, why ignored)

    def databases(self) -> list[str]:
        return sorted({e.db for e in self.entries})

    def refused_of(self, kind: Kind, db: str | None = None) -> list[Refused]:
        return [r for r in self.refused if r.kind == kind and (db is None or r.db == db)]

    def unsigned(self) -> list[str]:
        """Every backup accepted with something unsigned in it (allow_unsigned), described."""
        return [f"{e.describe()} ({', '.join(u)})" for e in self.entries + self.base + self.files
                if (u := e.unsigned())]


M = TypeVar("M", LogicalManifest, FilesManifest, BaseManifest)


class _Scan:
    """One scan: what it found so far, the trust it reads with, and the time it calls now."""

    def __init__(self, trust: Trust) -> None:
        self.cat = Catalogue()
        self.merged: dict[tuple[str, str, str, str], Entry] = {}
        self.trust = trust
        self.now = datetime.now(UTC)

    def copy(self, store: Store, prefix: str, keys: list[str], manifest: bytes, manifest_unsigned: bool,
             encryption: Encryption | None = None) -> Copy:
        """The copy under `prefix`, with the records that vouch for it: genuine ones, and unsigned ones only for
        an unsigned manifest accepted with `allow_unsigned` (a signed backup's records are signed too)."""
        digest = sha256_bytes(manifest)
        signed = signature_keys(keys)
        records: list[VerificationRecord] = []
        unsigned = [prefix + layout.MANIFEST] if manifest_unsigned else []
        for key in keys:
            if not (key.startswith(prefix + layout.VERIFICATIONS + "/") and key.endswith(".json")):
                continue
            try:
                data = store.get_bytes(key)
                verdict = self.trust.read(store, key, data, key in signed)
                if not verdict.accepted or (verdict.unsigned_accepted and not manifest_unsigned):
                    self.cat.refused_records.append((store.name, key, verdict.reason if not verdict.accepted else
                                                     "unsigned, for a signed backup"))
                    continue
                record = parse_verification(data)
            except (ValueError, ValidationError):
                continue  # an unreadable record vouches for nothing
            if future(record.checked_at, self.now):
                self.cat.refused_records.append((store.name, key, f"checked_at {record.checked_at.isoformat()} is "
                                                 "in the future"))
                continue
            if verdict.unsigned_accepted:
                unsigned.append(key)
            records.append(record)
        return Copy(store=store, prefix=prefix, manifest_sha256=digest, level=copy_level(records, digest),
                    records=records, keys=keys, unsigned=unsigned, encryption=encryption)

    def add(self, store: Store, prefix: str, kind: Kind, backup_id: str, db: str, cluster: str,
            parse: Callable[[bytes], M], when: Callable[[M], datetime]) -> None:
        """The backup under `prefix` in `store`: a copy of its entry (made at the first copy), incomplete, or
        refused."""
        keys = [k for k, _ in store.list_keys(prefix)]
        manifest_key = prefix + layout.MANIFEST
        if manifest_key not in keys:
            self.cat.incomplete.append(Incomplete(store, prefix, keys, "no manifest.json (interrupted)"))
            return
        data = store.get_bytes(manifest_key)
        verdict = self.trust.read(store, manifest_key, data, manifest_key + SIG_SUFFIX in keys)

        def refuse(reason: str) -> None:
            self.cat.refused.append(Refused(store, prefix, kind, backup_id, db, cluster, reason))

        if not verdict.accepted:
            refuse(verdict.reason)
            return
        try:
            m = parse(data)
        except (ValueError, ValidationError) as e:
            self.cat.incomplete.append(Incomplete(store, prefix, keys, f"unreadable manifest: {invalid_reason(e)}"))
            return
        if future(when(m), self.now):
            refuse(f"its time {when(m).isoformat()} is in the future (more than the clock skew allowed): forged, "
                   "or written by a host whose clock is wrong")
            return
        copy = self.copy(store, prefix, keys, data, verdict.unsigned_accepted, m.encryption)
        key = (kind, cluster, db, backup_id)
        entry = self.merged.get(key)
        if entry is None:
            entry = self.merged[key] = Entry(kind, backup_id, db, cluster, when(m), m.size_bytes, m)
        entry.copies[store.name] = copy


def copy_level(records: list[VerificationRecord], manifest_sha256: str) -> Level:
    """The highest level among the passed records for this manifest that are newer than its latest failed
    one: a failed verification (a test restore, a checksum) demotes a backup until a later one passes."""
    mine = [r for r in records if r.manifest_sha256 == manifest_sha256]
    failed = [r.checked_at for r in mine if not r.passed]
    since = max(failed) if failed else None
    return max((r.level_value for r in mine if since is None or r.checked_at > since), default=Level.none)


def _scan_store(store: Store, scan_: _Scan, db: str | None, kinds: tuple[Kind, ...]) -> None:
    if "logical" in kinds:
        for sysid in store.list_dirs("clusters/"):
            base = layout.logical_root(sysid)
            for name in store.list_dirs(base):
                if db is not None and name != db:
                    continue
                for bid in store.list_dirs(f"{base}{name}/"):
                    if not layout.is_id(bid):
                        continue
                    scan_.add(store, f"{base}{name}/{bid}/", "logical", bid, name, sysid, parse_logical,
                              lambda m: m.snapshot_time)
    if "base" in kinds:
        for sysid in store.list_dirs("clusters/"):
            for bid in store.list_dirs(layout.base_root(sysid)):
                if not layout.is_id(bid):
                    continue
                scan_.add(store, layout.base_prefix(sysid, bid), "base", bid, "", sysid, parse_base,
                          lambda m: m.stopped_at)
    if "files" in kinds:
        for bid in store.list_dirs("files/"):
            if not layout.is_id(bid):
                continue
            scan_.add(store, layout.files_prefix(bid), "files", bid, "", "", parse_files, lambda m: m.created_at)


def scan(stores: list[Store], *, trust: Trust, db: str | None = None,
         kinds: tuple[Kind, ...] = ("logical", "files")) -> Catalogue:
    """Read every configured repository with the keys `trust` holds; a repository that fails is recorded in
    `errors`, a backup that is not genuine in `refused`."""
    scan_ = _Scan(trust)
    cat = scan_.cat
    for store in stores:
        try:
            _scan_store(store, scan_, db, kinds)
        except RepositoryError as e:
            cat.errors[store.name] = str(e)
    entries = _only_legacy_unsigned(scan_.merged.values(), cat)
    entries.sort(key=lambda e: (e.time, e.backup_id), reverse=True)
    cat.entries = [e for e in entries if e.kind == "logical"]
    cat.files = [e for e in entries if e.kind == "files"]
    cat.base = [e for e in entries if e.kind == "base"]
    cat.refused.sort(key=lambda r: (r.backup_id, r.store.name), reverse=True)
    return cat


def _only_legacy_unsigned(entries: Iterable[Entry], cat: Catalogue) -> list[Entry]:
    """`allow_unsigned` is for backups from before signing: an unsigned copy as new as or newer than the first
    signed backup of its series (a database's logical backups, a cluster's base backups, the attachments) is
    refused, so that a forger cannot slip an unsigned "newest" backup into a repository where signing started."""

    def series(e: Entry) -> tuple[str, str]:
        return e.kind, e.cluster if e.kind == "base" else e.db

    def unsigned(c: Copy) -> bool:
        return c.prefix + layout.MANIFEST in c.unsigned

    first: dict[tuple[str, str], Entry] = {}
    for e in entries:
        if any(not unsigned(c) for c in e.copies.values()) and (
                series(e) not in first or e.time < first[series(e)].time):
            first[series(e)] = e
    kept = []
    for e in entries:
        signed_since = first.get(series(e))
        for name, c in list(e.copies.items()):
            if signed_since is not None and unsigned(c) and e.time >= signed_since.time:
                del e.copies[name]
                cat.refused.append(Refused(c.store, c.prefix, e.kind, e.backup_id, e.db, e.cluster, (
                    f"unsigned, and no older than {signed_since.backup_id}, the first signed backup of its series: "
                    "--allow-unsigned accepts only backups from before signing")))
        if e.copies:
            kept.append(e)
    return kept


def usable_copies(entry: Entry, min_level: Level = Level.readable, source: str = "any") -> list[Copy]:
    """The copies a recovery may use, local first (fastest), then s3."""
    return [entry.copies[n] for n in entry.locations()
            if entry.copies[n].level >= min_level and source in ("any", n)]


def pick(entries: list[Entry], db: str, *, min_level: Level = Level.readable, source: str = "any") -> Entry | None:
    """The newest backup of `db` with a copy at `min_level` or better (in `source`), across clusters."""
    for e in entries:  # newest first
        if e.db == db and usable_copies(e, min_level, source):
            return e
    return None


def pick_base(entries: list[Entry], *, before: datetime | None = None, cluster: str | None = None,
              min_level: Level = Level.readable, source: str = "any") -> Entry | None:
    """The newest base backup (of `cluster`, or any) that ended before `before`, with a usable copy."""
    for e in entries:  # newest first
        if e.kind != "base" or (cluster is not None and e.cluster != cluster):
            continue
        if before is not None and not e.time < before:
            continue
        if usable_copies(e, min_level, source):
            return e
    return None


def trust_notes(cat: Catalogue, kind: Kind, *, db: str | None = None, picked: Entry | None = None,
                source: str = "any") -> list[tuple[str, str, str]]:
    """What a reader must say about trust, as (check name, status, detail), each a warning: every refused copy
    of `kind` (of `db`) that a recovery would otherwise have considered (newer than `picked`), named with the
    reason, the older ones counted; and `picked` when it was accepted unsigned (allow_unsigned)."""
    refused = [r for r in cat.refused_of(kind, db) if source in ("any", r.store.name)]
    newer = [r for r in refused if picked is None or r.backup_id >= picked.backup_id]
    notes = [(f"not genuine: {r.kind} backup {r.backup_id}", "warning", f"{r.describe()} refused: {r.reason}")
             for r in newer]
    if older := len(refused) - len(newer):
        notes.append(("not genuine: older backups", "warning", f"{older} older {kind} backup copies refused as not "
                      "genuine (`runbook backups` names them and says why)"))
    if picked is not None and (unsigned := picked.unsigned(source)):
        notes.append((f"unsigned backup {picked.backup_id}", "warning",
                      f"unsigned {picked.describe()} accepted because --allow-unsigned (allow_unsigned: true): "
                      f"{', '.join(unsigned)}"))
    return notes
