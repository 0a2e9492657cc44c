"""fetch-latest-backup: the newest usable logical backup of a database, verified, into a directory.

Picks, across every cluster directory of the configured repositories, the newest backup of `db` at
`readable` or better (or the one named by `backup_id`), says what it picked and how old it is (its
snapshot time is the recovery point), and downloads it into `<dest>/<db>-<backup id>/` with every
object's sha256 checked as it streams. Nothing appears under the final name until every object has
verified. A corrupt or unreachable copy is reported with the object named, and the next copy of the
same backup is tried (local first, then S3); an older backup is never substituted in silence.

Only genuine backups are picked (signed by a key of signing.public_keys, not from the future): each one refused
is named with the reason (a warning check), and the newest genuine one is fetched. `allow_unsigned: true`
accepts a repository written before signing, and says so for the backup it fetches.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runbook.errors import RunbookError
from steps.events import Events
from steps.repository import layout
from steps.repository.manifest import LogicalManifest, parse_logical, sha256_bytes
from steps.repository.store import CorruptObject, RepositoryError, sha256_file
from steps.repository.verified import write_stamp


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    config: str | None = Field(None, description="Repository config (default: $RUNBOOK_CONFIG, "
                               "then /etc/runbook/repository.yaml)")
    db: str = Field(min_length=1, description="The database whose backup to fetch")
    dest: str = Field(min_length=1, description="Directory to fetch into (created; a sub-directory per backup)")
    source: Literal["local", "s3", "any"] = Field("any", alias="from", description="Which repository to read")
    backup_id: str | None = Field(None, description="This backup instead of the newest usable one")
    allow_unsigned: bool = Field(False, description="Accept unsigned backups (a repository written before "
                                 "signing); each one used is reported as a warning")


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    return f"{d}d {h}h {s // 60}m" if d else f"{h}h {s // 60}m"


def _verify_local(final: Path, manifest: LogicalManifest) -> bool:
    for o in manifest.objects:
        path = final / o.path
        if not path.is_file() or sha256_file(path) != (o.size, o.sha256):
            return False
    return True


def main(args: Args, events: Events) -> int:
    from steps.repository.catalogue import pick, scan, trust_notes, usable_copies
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.signing import trust_from_config

    try:
        cfg, cfg_path = load_repository_config(args.config)
        trust = trust_from_config(cfg, allow_unsigned=args.allow_unsigned)
    except RunbookError as e:
        print(f"fetch-latest-backup: {e}")
        return 2
    stores = []
    for which in ("local", "s3"):
        if getattr(cfg, which) is None or args.source not in ("any", which):
            continue
        try:
            store = open_stores(cfg, which)[0]  # type: ignore[arg-type]
            stores.append(store)
        except RunbookError as e:
            events.check(f"{which} repository", "warning" if args.source == "any" else "failed", str(e))
            print(f"the {which} repository cannot be used: {e}")
    if not stores:
        events.check("repository", "failed", f"no {args.source} repository is configured or usable in {cfg_path}")
        print(f"no {args.source} repository is configured or usable in {cfg_path}")
        return 1
    cat = scan(stores, trust=trust, db=args.db, kinds=("logical",))
    for name, err in cat.errors.items():
        events.check(f"{name} repository", "warning", err)
        print(f"the {name} repository could not be read: {err}")
    if args.backup_id:
        entry = next((e for e in cat.entries if e.backup_id == args.backup_id), None)
        if entry is not None and not usable_copies(entry, source=args.source):
            print(f"backup {args.backup_id} of {args.db} is only at level {entry.level.name}; a recovery needs readable")
            entry = None
    else:
        entry = pick(cat.entries, args.db, source=args.source)
    for name, status, detail in trust_notes(cat, "logical", db=args.db, picked=entry, source=args.source):
        events.check(name, status, detail)
        print(detail, flush=True)
    if entry is None:
        what = f"backup {args.backup_id}" if args.backup_id else "backup"
        hint = f"{what} of {args.db} at readable or better in {', '.join(s.describe() for s in stores)}"
        events.check("backup to restore", "failed", f"no {hint}")
        print(f"no {hint}; `runbook backups -c {cfg_path}` lists what there is")
        return 1

    now = datetime.now(UTC)
    m = entry.manifest
    assert isinstance(m, LogicalManifest)
    age = _age((now - entry.time).total_seconds())
    print(f"picked {args.db} backup {entry.backup_id}: snapshot {entry.time.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
          f"({age} old; everything after it is lost), cluster {entry.cluster}, {entry.size_bytes / 1e6:.1f} MB, "
          f"level {entry.level.name}, copies in {', '.join(entry.locations())}", flush=True)
    events.check("backup picked", "ok", f"{entry.backup_id}, {age} old, {entry.level.name}")

    dest = Path(args.dest)
    final = dest / f"{args.db}-{entry.backup_id}"
    try:
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        print(f"cannot create {dest}: {e.strerror}")
        return 1
    if final.exists():
        if _verify_local(final, m):
            write_stamp(final, sha256_bytes((final / layout.MANIFEST).read_bytes()), [o.path for o in m.objects],
                        "fetch-latest-backup")
            print(f"{final} already holds this backup, every object verified: using it")
            _outputs(events, final, entry.backup_id, m, entry.cluster, "existing")
            return 0
        print(f"{final} exists but does not match the backup: move it away and run again")
        events.check("destination", "failed", f"{final} exists and differs from the backup")
        return 1

    for copy in usable_copies(entry, source=args.source):
        store = copy.store
        partial = dest / f".partial-{args.db}-{entry.backup_id}"
        shutil.rmtree(partial, ignore_errors=True)
        t0 = time.monotonic()
        try:
            data = store.get_bytes(copy.prefix + layout.MANIFEST)
            if sha256_bytes(data) != copy.manifest_sha256:
                raise CorruptObject(store.describe(), copy.prefix + layout.MANIFEST, copy.manifest_sha256,
                                    sha256_bytes(data))
            manifest = parse_logical(data)
            total = manifest.size_bytes
            progress = _Progress(events, total, f"fetching from {store.name}")
            for o in manifest.objects:
                store.fetch_file(copy.prefix + o.path, partial / o.path, size=o.size, sha256=o.sha256,
                                 progress=progress)
            (partial / layout.MANIFEST).write_bytes(data)
            write_stamp(partial, sha256_bytes(data), [o.path for o in manifest.objects], "fetch-latest-backup")
            os.replace(partial, final)
        except RepositoryError as e:
            shutil.rmtree(partial, ignore_errors=True)
            name = f"sha256 of {e.key}" if isinstance(e, CorruptObject) else f"fetch from {store.name}"
            events.check(name, "failed", str(e))
            print(f"copy in {store.describe()} failed: {e}", flush=True)
            continue
        secs = time.monotonic() - t0
        print(f"fetched {len(manifest.objects)} objects, {total / 1e6:.1f} MB from {store.describe()} in {secs:.1f} s, "
              f"every sha256 verified, into {final}")
        events.check("sha256 of every object", "ok", f"{len(manifest.objects)} objects from {store.name}")
        _outputs(events, final, entry.backup_id, manifest, entry.cluster, store.name)
        return 0
    print(f"no copy of backup {entry.backup_id} could be fetched intact; nothing was restored. "
          f"Pass backup_id to use an older backup deliberately (`runbook backups` lists them).")
    return 1


class _Progress:
    """Byte counts to progress events, at most two a second."""

    def __init__(self, events: Events, total: int, label: str) -> None:
        self.events, self.total, self.label = events, total, label
        self.done = 0
        self.last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        if time.monotonic() - self.last > 0.5 or self.done >= self.total:
            self.last = time.monotonic()
            self.events.progress(self.done, self.total, "bytes", self.label)


def _outputs(events: Events, final: Path, bid: str, m: LogicalManifest, cluster: str, source: str) -> None:
    events.output("backup_dir", str(final))
    events.output("backup_id", bid)
    events.output("snapshot_time", m.snapshot_time.isoformat())
    events.output("db", m.database.name)
    events.output("cluster", cluster)
    events.output("size_bytes", m.size_bytes)
    events.output("source", source)
