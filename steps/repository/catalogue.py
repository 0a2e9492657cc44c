"""The catalogue: which backups exist in which repositories, at which verification level.

A backup exists in a repository when its `manifest.json` does; its level there is the highest level of
the passed verification records that vouch for that very manifest (by sha256). Copies of one backup
(same cluster, database and id) in several repositories are merged into one entry with its locations.
Directories without a manifest are incomplete (an interrupted backup): never listed as backups, only
reported so that `prune` can remove them. A repository that cannot be read is reported, not fatal.

`pick` answers the recovery's question: the newest backup of a database at `readable` or better. A copy
whose latest verification record failed (verify-backup's test restore, a checksum) is demoted to `none`
until a later check passes: recovery never picks it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import ValidationError

from steps.repository import layout
from steps.repository.manifest import (
    BaseManifest,
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

    def databases(self) -> list[str]:
        return sorted({e.db for e in self.entries})


def _copy(store: Store, prefix: str, keys: list[str], manifest: bytes) -> Copy:
    digest = sha256_bytes(manifest)
    records: list[VerificationRecord] = []
    for key in keys:
        if key.startswith(prefix + layout.VERIFICATIONS + "/") and key.endswith(".json"):
            try:
                records.append(parse_verification(store.get_bytes(key)))
            except (ValueError, ValidationError):
                continue  # an unreadable record vouches for nothing
    return Copy(store=store, prefix=prefix, manifest_sha256=digest, level=copy_level(records, digest),
                records=records, keys=keys)


def copy_level(records: list[VerificationRecord], manifest_sha256: str) -> Level:
    """The highest level among the passed records for this manifest that are newer than its latest failed
    one: a failed verification (a test restore, a checksum) demotes a backup until a later one passes."""
    mine = [r for r in records if r.manifest_sha256 == manifest_sha256]
    failed = [r.checked_at for r in mine if not r.passed]
    since = max(failed) if failed else None
    return max((r.level_value for r in mine if since is None or r.checked_at > since), default=Level.none)


def _scan_dir(store: Store, prefix: str, cat: Catalogue) -> tuple[bytes, Copy] | None:
    keys = [k for k, _ in store.list_keys(prefix)]
    if prefix + layout.MANIFEST not in keys:
        cat.incomplete.append(Incomplete(store, prefix, keys, "no manifest.json (interrupted)"))
        return None
    data = store.get_bytes(prefix + layout.MANIFEST)
    return data, _copy(store, prefix, keys, data)


M = TypeVar("M", LogicalManifest, FilesManifest, BaseManifest)


def _add_copy(store: Store, cat: Catalogue, merged: dict[tuple[str, str, str, str], Entry], prefix: str,
              kind: Kind, backup_id: str, db: str, cluster: str, parse: Callable[[bytes], M],
              when: Callable[[M], datetime]) -> None:
    """The backup under `prefix` in `store`: a copy of its entry (made at the first copy), or incomplete."""
    found = _scan_dir(store, prefix, cat)
    if found is None:
        return
    data, copy = found
    try:
        m = parse(data)
    except (ValueError, ValidationError) as e:
        cat.incomplete.append(Incomplete(store, prefix, copy.keys, f"unreadable manifest: {invalid_reason(e)}"))
        return
    key = (kind, cluster, db, backup_id)
    entry = merged.get(key)
    if entry is None:
        entry = merged[key] = Entry(kind, backup_id, db, cluster, when(m), m.size_bytes, m)
    entry.copies[store.name] = copy


def _scan_store(store: Store, cat: Catalogue, merged: dict[tuple[str, str, str, str], Entry],
                db: str | None, kinds: tuple[Kind, ...]) -> None:
    if "logical" in kinds:
        for sysid in store.list_dirs("clusters/"):
            base = layout.logical_root(sysid)
            for name in store.list_dirs(base):
                if db is not None and name != db:
                    continue
                for bid in store.list_dirs(f"{base}{name}/"):
                    if not layout.is_id(bid):
                        continue
                    _add_copy(store, cat, merged, f"{base}{name}/{bid}/", "logical", bid, name, sysid,
                              parse_logical, lambda m: m.snapshot_time)
    if "base" in kinds:
        for sysid in store.list_dirs("clusters/"):
            for bid in store.list_dirs(layout.base_root(sysid)):
                if not layout.is_id(bid):
                    continue
                _add_copy(store, cat, merged, layout.base_prefix(sysid, bid), "base", bid, "", sysid,
                          parse_base, lambda m: m.stopped_at)
    if "files" in kinds:
        for bid in store.list_dirs("files/"):
            if not layout.is_id(bid):
                continue
            _add_copy(store, cat, merged, layout.files_prefix(bid), "files", bid, "", "",
                      parse_files, lambda m: m.created_at)


def scan(stores: list[Store], *, db: str | None = None, kinds: tuple[Kind, ...] = ("logical", "files")) -> Catalogue:
    """Read every configured repository; a repository that fails is recorded in `errors`."""
    cat = Catalogue()
    merged: dict[tuple[str, str, str, str], Entry] = {}
    for store in stores:
        try:
            _scan_store(store, cat, merged, db, kinds)
        except RepositoryError as e:
            cat.errors[store.name] = str(e)
    entries = sorted(merged.values(), key=lambda e: (e.time, e.backup_id), reverse=True)
    cat.entries = [e for e in entries if e.kind == "logical"]
    cat.files = [e for e in entries if e.kind == "files"]
    cat.base = [e for e in entries if e.kind == "base"]
    return cat


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
