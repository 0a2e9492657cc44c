"""restore-attachments: the user-uploaded files of a backup run, byte-identical, into a directory.

Which snapshot: the one of the backup run `backup_id` when it has one (scenario 1 pairs the files with the
database it restored: `{{ steps.fetch.backup_id }}`); else, when `at` (the recovery point) is given, the newest
snapshot taken at or before it, and when every snapshot is newer, the nearest after it with a warning (files
uploaded after the recovery point come back although the database does not know them); else the newest. With
`at`, how far the snapshot is from the recovery point is said in the output and in the outputs `distance_s`
and `distance`.

The tar is downloaded into a fresh private directory (0700) beside the destination with its sha256 checked as it
streams (from an encrypted repository: decrypted as it streams, its stored sha256 checked first; a copy this
host has no key for, or whose ciphertext is altered, is named and the next copy tried: steps.encrypted.reading), extracted there with the checks of steps.backup.attachments (safe paths only, every file re-hashed), and
renamed into place. A symbolic link at the destination is refused; a non-empty destination is refused unless
`overwrite: true`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runbook.durations import rough_duration
from runbook.errors import RunbookError
from steps.events import Events
from steps.repository import layout
from steps.repository.manifest import FilesManifest, Level, parse_files, sha256_bytes
from steps.repository.store import CorruptObject, RepositoryError

if TYPE_CHECKING:
    from steps.repository.catalogue import Entry


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    config: str | None = Field(None, description="Repository config (default: $RUNBOOK_CONFIG, "
                               "then /etc/runbook/repository.yaml)")
    dest: str = Field(min_length=1, description="Directory to restore the files into (absent or empty, or overwrite); "
                      "a symbolic link there is refused")
    backup_id: str | None = Field(None, description="Prefer the snapshot of this backup run (the database's: "
                                  "`{{ steps.fetch.backup_id }}`); when that run has none, `at` chooses, with a "
                                  "warning; without `at` the step fails")
    at: str | None = Field(None, description="The recovery point (ISO 8601 with a time zone): the newest snapshot "
                           "taken at or before it, else the nearest after it (a warning); the distance is reported")
    source: Literal["local", "s3", "any"] = Field("any", alias="from")
    overwrite: bool = Field(False, description="Restore into a non-empty directory, replacing same-named files")
    allow_unsigned: bool = Field(False, description="Accept an unsigned attachments snapshot (a repository "
                                 "written before signing); the one used is reported as a warning")

    @field_validator("backup_id", "at")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @field_validator("at")
    @classmethod
    def _aware_time(cls, v: str | None) -> str | None:
        if v is not None:
            parse_time(v)
        return v


def parse_time(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time, e.g. 2026-11-25T03:10:00+07:00") from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add one, e.g. 2026-11-25T03:10:00+07:00 or ...Z")
    return t


class Snapshot(Protocol):
    @property
    def backup_id(self) -> str: ...
    @property
    def time(self) -> datetime: ...


@dataclass
class Choice:
    entry: Snapshot
    how: str  # "backup run", "before", "after", "newest"
    warning: str | None = None

    def distance_s(self, at: datetime) -> float:
        """Seconds from the snapshot to the recovery point: positive when the snapshot is older."""
        return (at - self.entry.time).total_seconds()


def describe_distance(snapshot: datetime, at: datetime) -> str:
    d = (at - snapshot).total_seconds()
    if d == 0:
        return "taken at the recovery point"
    side = "before" if d > 0 else "after"
    if abs(d) < 1:
        return f"less than 1 s {side} the recovery point"
    return f"{rough_duration(abs(d))} {side} the recovery point"


def choose(snapshots: list[Snapshot], *, at: datetime | None = None, backup_id: str | None = None) -> Choice | None:
    """The snapshot to restore (see the module's docstring), or None when there is none to choose.

    `snapshots` may come in any order."""
    if backup_id is not None:
        same = [s for s in snapshots if s.backup_id == backup_id]
        if same:
            return Choice(same[0], "backup run")
        if at is None:
            return None
    if not snapshots:
        return None
    if at is None:
        return Choice(max(snapshots, key=lambda s: (s.time, s.backup_id)), "newest")
    missing = f"backup run {backup_id} has no attachments snapshot; chose by time instead. " if backup_id else ""
    before = [s for s in snapshots if s.time <= at]
    if before:
        best = max(before, key=lambda s: (s.time, s.backup_id))
        return Choice(best, "before", missing.rstrip() or None)
    best = min(snapshots, key=lambda s: (s.time, s.backup_id))
    return Choice(best, "after", missing + (
        f"every attachments snapshot is newer than the recovery point: restoring the nearest after it "
        f"({describe_distance(best.time, at)}); files uploaded after the recovery point come back although "
        f"the database does not know them"))


def main(args: Args, events: Events) -> int:
    from steps.backup.attachments import AttachmentsError, check_destination, extract, private_workdir
    from steps.encrypted.reading import Keys
    from steps.repository.catalogue import scan, trust_notes, usable_copies
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.signing import trust_from_config

    try:
        cfg, cfg_path = load_repository_config(args.config)
        stores = open_stores(cfg, args.source)
        trust = trust_from_config(cfg, allow_unsigned=args.allow_unsigned)
    except RunbookError as e:
        print(f"restore-attachments: {e}")
        return 2
    keys = Keys(cfg, trust, allow_unsigned=args.allow_unsigned, config_path=cfg_path)
    at = parse_time(args.at) if args.at else None
    cat = scan(stores, trust=trust, kinds=("files",))
    for name, err in cat.errors.items():
        print(f"the {name} repository could not be read: {err}")
    usable = [e for e in cat.files if usable_copies(e, Level.checksummed, args.source)]
    chosen = choose(usable, at=at, backup_id=args.backup_id)  # type: ignore[arg-type]
    if chosen is None:
        what = f"attachments of backup {args.backup_id}" if args.backup_id else "attachments snapshot"
        events.check("attachments", "failed", f"no {what} in the repository")
        print(f"no {what} in {', '.join(s.describe() for s in stores)}")
        return 1
    entry = cast("Entry", chosen.entry)
    for name, status, detail in trust_notes(cat, "files", picked=entry, source=args.source):
        events.check(name, status, detail)
        print(detail, flush=True)
    dest = Path(args.dest)
    try:
        check_destination(dest, overwrite=args.overwrite)
    except AttachmentsError as e:
        events.check("destination", "failed", str(e))
        print(e)
        return 1
    when = entry.time.isoformat()
    said = f"attachments snapshot {when}"
    if chosen.how == "backup run":
        said += f" of backup run {entry.backup_id} (the database's)"
    if at is not None:
        said += f", {describe_distance(entry.time, at)} ({at.isoformat()})"
    if chosen.warning:
        events.check("snapshot choice", "warning", chosen.warning)
        print(f"warning: {chosen.warning}", flush=True)
    print(said, flush=True)
    print(f"restoring attachments {entry.backup_id} ({entry.size_bytes / 1e6:.1f} MB) into {dest}", flush=True)
    for copy in usable_copies(entry, Level.checksummed, args.source):
        try:
            work = private_workdir(dest, "attachments")
        except (OSError, RunbookError) as e:
            events.check("destination", "failed", f"no private working directory beside {dest}: {e}")
            print(f"cannot make a private working directory beside {dest}: {e}")
            return 1
        try:
            data = copy.store.get_bytes(copy.prefix + layout.MANIFEST)
            if sha256_bytes(data) != copy.manifest_sha256:
                raise CorruptObject(copy.store.describe(), copy.prefix + layout.MANIFEST, copy.manifest_sha256,
                                    sha256_bytes(data))
            manifest: FilesManifest = parse_files(data)
            tar = work / layout.ATTACHMENTS_TAR
            obj = next(o for o in manifest.objects if o.path == layout.ATTACHMENTS_TAR)
            # Encrypted: the key first (nothing is fetched without one), then decrypted as it streams, the stored
            # sha256 checked before the tar is used (steps.encrypted.reading).
            opener = keys.opener(copy.store, manifest, f"attachments {entry.backup_id} in {copy.store.describe()}")
            copy.store.fetch_file(copy.prefix + manifest.stored_key(obj), tar, size=obj.size, sha256=obj.sha256,
                                  progress=lambda n: None,
                                  decoding=opener.decoding(obj) if opener is not None else None)
            count = extract(tar, manifest.files, dest, overwrite=args.overwrite, work=work)
        except (RepositoryError, AttachmentsError) as e:
            events.check(f"attachments from {copy.store.name}", "failed", str(e))
            print(f"copy in {copy.store.describe()} failed: {e}", flush=True)
            if isinstance(e, AttachmentsError):
                return 1  # the archive itself is wrong: another copy has the same bytes
            continue
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"restored {count} files into {dest}, every sha256 verified")
        events.check("attachments", "ok", f"{count} files, sha256 verified; {said}")
        events.output("dest", str(dest))
        events.output("attachments_id", entry.backup_id)
        events.output("files", count)
        events.output("attachments_time", when)
        if at is not None:
            events.output("distance_s", round(chosen.distance_s(at), 3))
            events.output("distance", said)
        return 0
    return 1
