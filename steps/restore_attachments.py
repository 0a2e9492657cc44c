"""restore-attachments: the user-uploaded files of a backup run, byte-identical, into a directory.

Picks the attachments snapshot with the given id (pair it with the database: `{{ steps.fetch.backup_id }}`)
or else the newest one, downloads its tar with the sha256 checked as it streams, and extracts it with the
checks of steps.backup.attachments (safe paths only, every file re-hashed). A non-empty destination is refused
unless `overwrite: true`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runbook.errors import RunbookError
from steps.events import Events
from steps.repository import layout
from steps.repository.manifest import FilesManifest, Level, parse_files, sha256_bytes
from steps.repository.store import CorruptObject, RepositoryError


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    config: str | None = Field(None, description="Repository config (default: $RUNBOOK_CONFIG, "
                               "then /etc/runbook/repository.yaml)")
    dest: str = Field(min_length=1, description="Directory to restore the files into (empty, or overwrite)")
    backup_id: str | None = Field(None, description="The run whose attachments to restore (default: the newest)")
    source: Literal["local", "s3", "any"] = Field("any", alias="from")
    overwrite: bool = Field(False, description="Restore into a non-empty directory, replacing same-named files")
    allow_unsigned: bool = Field(False, description="Accept an unsigned attachments snapshot (a repository "
                                 "written before signing); the one used is reported as a warning")


def main(args: Args, events: Events) -> int:
    from steps.backup.attachments import AttachmentsError, extract
    from steps.repository.catalogue import scan, trust_notes, usable_copies
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.signing import trust_from_config

    try:
        cfg, _ = load_repository_config(args.config)
        stores = open_stores(cfg, args.source)
        trust = trust_from_config(cfg, allow_unsigned=args.allow_unsigned)
    except RunbookError as e:
        print(f"restore-attachments: {e}")
        return 2
    cat = scan(stores, trust=trust, kinds=("files",))
    for name, err in cat.errors.items():
        print(f"the {name} repository could not be read: {err}")
    candidates = [e for e in cat.files if args.backup_id in (None, e.backup_id)
                  and usable_copies(e, Level.checksummed, args.source)]
    if not candidates:
        what = f"attachments of backup {args.backup_id}" if args.backup_id else "attachments snapshot"
        events.check("attachments", "failed", f"no {what} in the repository")
        print(f"no {what} in {', '.join(s.describe() for s in stores)}")
        return 1
    entry = candidates[0]
    for name, status, detail in trust_notes(cat, "files", picked=entry, source=args.source):
        events.check(name, status, detail)
        print(detail, flush=True)
    dest = Path(args.dest)
    if dest.exists() and any(dest.iterdir()) and not args.overwrite:
        msg = f"{dest} is not empty; nothing was restored (restore into an empty directory, or overwrite: true)"
        events.check("destination", "failed", msg)
        print(msg)
        return 1
    print(f"restoring attachments {entry.backup_id} ({entry.size_bytes / 1e6:.1f} MB) into {dest}", flush=True)
    for copy in usable_copies(entry, Level.checksummed, args.source):
        work = dest.parent / f".{dest.name}.attachments-{entry.backup_id}"
        shutil.rmtree(work, ignore_errors=True)
        try:
            data = copy.store.get_bytes(copy.prefix + layout.MANIFEST)
            if sha256_bytes(data) != copy.manifest_sha256:
                raise CorruptObject(copy.store.describe(), copy.prefix + layout.MANIFEST, copy.manifest_sha256,
                                    sha256_bytes(data))
            manifest: FilesManifest = parse_files(data)
            tar = work / layout.ATTACHMENTS_TAR
            obj = next(o for o in manifest.objects if o.path == layout.ATTACHMENTS_TAR)
            copy.store.fetch_file(copy.prefix + obj.path, tar, size=obj.size, sha256=obj.sha256,
                                  progress=lambda n: None)
            count = extract(tar, manifest.files, dest, overwrite=args.overwrite)
        except (RepositoryError, AttachmentsError) as e:
            events.check(f"attachments from {copy.store.name}", "failed", str(e))
            print(f"copy in {copy.store.describe()} failed: {e}", flush=True)
            if isinstance(e, AttachmentsError):
                return 1  # the archive itself is wrong: another copy has the same bytes
            continue
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"restored {count} files into {dest}, every sha256 verified")
        events.check("attachments", "ok", f"{count} files, sha256 verified")
        events.output("dest", str(dest))
        events.output("attachments_id", entry.backup_id)
        events.output("files", count)
        return 0
    return 1
