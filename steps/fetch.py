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

The repository is hostile input (a recovery runs as root). A manifest whose object paths are not plain
relative paths inside the backup does not parse: that backup is named as unusable and never opened. `dest`
must be a real directory owned by root or by us (made 0750 when missing); the backup is fetched into a
fresh private directory in it (`mkdtemp`, 0700), each object beneath its descriptor without following a
link, into a temporary name (O_EXCL, 0600), renamed once its sha256 matched; the whole directory is renamed
to `<db>-<backup id>` at the end, with the stamp restore-logical trusts (steps.repository.verified).
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runbook.errors import RunbookError
from steps.events import Events, resume_with
from steps.fs import (
    UnsafePath,
    check_parent,
    hash_beneath,
    open_beneath,
    open_dir,
    open_read_beneath,
    open_subdir,
    private_dir,
)
from steps.repository import layout
from steps.repository.manifest import LogicalManifest, invalid_reason, parse_logical, sha256_bytes
from steps.repository.store import CorruptObject, RepositoryError
from steps.repository.verified import write_stamp

if TYPE_CHECKING:
    from steps.encrypted.reading import Keys


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    config: str | None = Field(None, description="Repository config (default: $RUNBOOK_CONFIG, "
                               "then /etc/runbook/repository.yaml)")
    db: str = Field(min_length=1, description="The database whose backup to fetch")
    dest: str = Field(min_length=1, description="Directory to fetch into (made 0750 when missing; must belong to "
                      "root or to the user fetching): the backup lands in a private sub-directory <db>-<backup id>")
    source: Literal["local", "s3", "any"] = Field("any", alias="from", description="Which repository to read")
    backup_id: str | None = Field(None, description="This backup instead of the newest usable one")
    allow_unsigned: bool = Field(False, description="Accept unsigned backups (a repository written before "
                                 "signing); each one used is reported as a warning")
    cluster: str | None = Field(None, description="System identifier of the cluster the recovery expects "
                                "(`runbook backups` lists them): a backup of another cluster is never picked; "
                                "empty: the newest of any cluster, with a warning when several hold the database")

    @field_validator("cluster", "backup_id", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v


def _of_cluster(entries: list[Any], args: Args, events: Events) -> list[Any] | None:
    """The backups of `db` a recovery may choose from: those of the expected cluster when one is named.

    A repository holds a database under several clusters after a logical restore (the new server has a new
    system identifier) or when two servers share a repository; a sandbox rebuilt during a drill is a new
    cluster too. Restoring another cluster's backup than the one the recovery expected would make every
    verdict after it false, so it is refused, and the clusters there are named."""
    mine = [e for e in entries if e.db == args.db]
    clusters = sorted({e.cluster for e in mine})
    if args.cluster is None:
        if len(clusters) > 1:
            msg = (f"backups of {args.db} come from {len(clusters)} clusters ({', '.join(clusters)}): the newest "
                   "is picked, whichever cluster it is of; set `cluster` (param source_cluster) to the one meant")
            events.check("cluster of the backup", "warning", msg)
            print(msg)
        return entries
    if args.cluster not in clusters:
        others = f"it holds backups of {args.db} from {', '.join(clusters)} only" if clusters else \
            f"it holds no backup of {args.db} at all"
        msg = (f"no backup of {args.db} from cluster {args.cluster}, the one this recovery expects: {others}. "
               "The server or sandbox was rebuilt (a new system identifier), or the expected cluster is wrong")
        events.check("cluster of the backup", "failed", msg)
        print(msg + "; nothing was fetched")
        return None
    events.check("cluster of the backup", "ok", f"{args.cluster}, as expected")
    return [e for e in entries if e.cluster == args.cluster]


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    return f"{d}d {h}h {s // 60}m" if d else f"{h}h {s // 60}m"



def _reuse_existing(dest_fd: int, name: str, manifest_sha256s: set[str]) -> tuple[str, LogicalManifest] | str:
    """An earlier fetch's `<dest>/<name>` of this very backup: (its manifest's sha256, manifest) when it is
    ours (a real directory, 0700, owned by root or us), its manifest is one of this backup's copies' and every
    file matches; else why not."""
    st = os.stat(name, dir_fd=dest_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory (a link or a file)"
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o077:
        return f"it is not private to this user (uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
    fd = open_subdir(dest_fd, name)
    try:
        mfd = open_read_beneath(fd, layout.MANIFEST, what="manifest")
        with os.fdopen(mfd, "rb") as f:
            data = f.read()
        digest = sha256_bytes(data)
        if digest not in manifest_sha256s:
            return "its manifest.json is not this backup's"
        manifest = parse_logical(data)
        for o in manifest.objects:
            if hash_beneath(fd, o.path) != (o.size, o.sha256):
                return f"{o.path} does not match its sha256"
        write_stamp(fd, digest, [o.path for o in manifest.objects], "fetch-latest-backup")
        return digest, manifest
    except UnsafePath as e:
        return str(e)
    finally:
        os.close(fd)


def _remove_leftovers(dest: Path, dest_fd: int, prefix: str) -> None:
    """Work directories of this backup that an interrupted fetch left (killed before it could clean up): only
    real directories of ours, removed without following any link inside them."""
    for name in os.listdir(dest_fd):
        if not name.startswith(prefix):
            continue
        st = os.stat(name, dir_fd=dest_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            shutil.rmtree(name, dir_fd=dest_fd, ignore_errors=True)
            print(f"removed {dest / name}, left by an interrupted fetch", flush=True)


def _report_unusable(cat: Any, db: str, events: Events) -> None:
    """Backups of `db` whose manifest does not parse (a path that is not data, a forged field): named, skipped."""
    for inc in cat.incomplete:
        parts = inc.prefix.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == db and inc.reason.startswith("unreadable manifest"):
            msg = f"backup {inc.backup_id} of {db} in {inc.store.describe()} is unusable: {inc.reason}"
            events.check(f"backup {inc.backup_id}", "warning", msg)
            print(f"skipped: {msg}", flush=True)


def main(args: Args, events: Events) -> int:
    from steps.encrypted.reading import Keys
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
    _report_unusable(cat, args.db, events)
    entries = _of_cluster(cat.entries, args, events)
    if entries is None:
        return 1
    if args.backup_id:
        entry = next((e for e in entries if e.backup_id == args.backup_id), None)
        if entry is not None and not usable_copies(entry, source=args.source):
            print(f"backup {args.backup_id} of {args.db} is only at level {entry.level.name}; a recovery needs readable")
            entry = None
    else:
        entry = pick(entries, args.db, source=args.source)
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
    final_name = f"{args.db}-{entry.backup_id}"
    final = dest / final_name
    try:
        if not os.path.lexists(dest):
            os.makedirs(dest, mode=0o750, exist_ok=True)
        check_parent(dest, "fetch destination")
        with open_dir(dest) as dest_fd:
            code = _fetch_into(args, events, entry, dest, dest_fd, final_name,
                               Keys(cfg, trust, allow_unsigned=args.allow_unsigned, config_path=cfg_path))
        if code != 0 and not args.backup_id:
            _offer_previous(args, events, entries, entry)
        return code
    except UnsafePath as e:
        events.check("destination", "failed", str(e))
        print(f"{e}; nothing was fetched")
        return 1
    except OSError as e:
        print(f"cannot use {final if os.path.lexists(dest) else dest}: {e.strerror or e}")
        events.check("destination", "failed", f"{dest}: {e.strerror or e}")
        return 1


def _fetch_into(args: Args, events: Events, entry: Any, dest: Path, dest_fd: int, final_name: str,
                keys: Keys) -> int:
    from steps.crypto.errors import EncryptionError
    from steps.encrypted.reading import key_error_check
    from steps.repository.catalogue import usable_copies

    final = dest / final_name
    copies = usable_copies(entry, source=args.source)
    try:
        os.stat(final_name, dir_fd=dest_fd, follow_symlinks=False)
        exists = True
    except FileNotFoundError:
        exists = False
    if exists:
        reused = _reuse_existing(dest_fd, final_name, {c.manifest_sha256 for c in copies})
        if isinstance(reused, tuple):
            print(f"{final} already holds this backup, every object verified: using it")
            _outputs(events, final, entry.backup_id, reused[1], entry.cluster, "existing")
            return 0
        print(f"{final} exists but cannot be used ({reused}): move it away and run again")
        events.check("destination", "failed", f"{final} exists and cannot be used: {reused}")
        return 1

    _remove_leftovers(dest, dest_fd, f".partial-{args.db}-{entry.backup_id}-")
    key_failures = 0  # copies this host holds no key for (the others: damaged or unreachable)
    for copy in copies:
        store = copy.store
        work = private_dir(dest, f".partial-{args.db}-{entry.backup_id}-")
        t0 = time.monotonic()
        try:
            data = store.get_bytes(copy.prefix + layout.MANIFEST)
            if sha256_bytes(data) != copy.manifest_sha256:
                raise CorruptObject(store.describe(), copy.prefix + layout.MANIFEST, copy.manifest_sha256,
                                    sha256_bytes(data))
            try:
                manifest = parse_logical(data)
            except (ValueError, ValidationError) as e:
                raise RepositoryError(f"the manifest of {copy.prefix} in {store.describe()} is unusable: "
                                      f"{invalid_reason(e)}") from None
            # An encrypted copy: this host's key for its epoch, before any object is fetched (a wrong or missing
            # key is named here); then each object decrypted as it streams, its stored sha256 checked first.
            opener = keys.opener(store, manifest, f"backup {entry.backup_id} of {args.db} in {store.describe()}")
            total = manifest.stored_bytes
            progress = _Progress(events, total, f"fetching from {store.name}")
            with open_dir(work) as work_fd:
                for o in manifest.objects:
                    store.fetch_beneath(copy.prefix + manifest.stored_key(o), work_fd, o.path, size=o.size,
                                        sha256=o.sha256, progress=progress,
                                        decoding=opener.decoding(o) if opener is not None else None)
                fd = open_beneath(work_fd, layout.MANIFEST, what="manifest")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                write_stamp(work_fd, sha256_bytes(data), [o.path for o in manifest.objects], "fetch-latest-backup")
            # The whole directory appears under its final name at once; a non-empty directory or a link that
            # appeared there meanwhile makes the rename fail, it is never written into.
            os.rename(work.name, final_name, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
        except RunbookError as e:  # the repository's, a path's, a key's, a ciphertext's (steps.crypto.errors)
            shutil.rmtree(work, ignore_errors=True)
            if isinstance(e, CorruptObject):
                name = f"sha256 of {e.key}"
            elif isinstance(e, EncryptionError):
                name = f"{key_error_check(e)} of the {store.name} copy"
                key_failures += name.startswith("decryption key")
            else:
                name = f"fetch from {store.name}"
            events.check(name, "failed", str(e))
            print(f"copy in {store.describe()} failed: {e}", flush=True)
            continue
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        secs = time.monotonic() - t0
        how = "every sha256 verified"
        if manifest.encryption is not None:
            how = (f"decrypted (age, epoch {manifest.encryption.epoch}), every stored and plaintext sha256 verified")
            events.check("decryption", "ok", f"{len(manifest.objects)} objects of epoch {manifest.encryption.epoch}")
        print(f"fetched {len(manifest.objects)} objects, {total / 1e6:.1f} MB from {store.describe()} in {secs:.1f} s, "
              f"{how}, into {final}")
        events.check("sha256 of every object", "ok", f"{len(manifest.objects)} objects from {store.name}")
        _outputs(events, final, entry.backup_id, manifest, entry.cluster, store.name)
        return 0
    if copies and key_failures == len(copies):
        print(f"no copy of backup {entry.backup_id} opens with this host's keys (encryption.identity_files); nothing "
              "was fetched or restored")
        return 1
    print(f"no copy of backup {entry.backup_id} could be fetched intact; nothing was restored. "
          f"Pass backup_id to use an older backup deliberately (`runbook backups` lists them).")
    return 1


def _offer_previous(args: Args, events: Events, entries: list[Any], failed: Any) -> None:
    """The newest backup could not be fetched intact: name the previous usable backup of the same cluster and
    database, how much older it is (the data written in between is lost too), and how to take it (backup_id)."""
    from steps.repository.catalogue import usable_copies

    older = sorted((e for e in entries if e.db == args.db and e.cluster == failed.cluster
                    and e.backup_id < failed.backup_id and usable_copies(e, source=args.source)),
                   key=lambda e: e.backup_id, reverse=True)
    if not older:
        msg = (f"there is no older usable backup of {args.db} (cluster {failed.cluster}) to fall back to: "
               "`runbook backups` lists what there is")
        events.check("previous verified backup", "failed", msg)
        print(msg)
        return
    prev = older[0]
    gap = max(0.0, (failed.time - prev.time).total_seconds())
    resume = f"`{resume_with('--set backup_id=' + prev.backup_id)}`"
    msg = (f"the previous verified backup is {prev.backup_id}: snapshot {prev.time.astimezone(UTC):%Y-%m-%d %H:%M:%S} "
           f"UTC, {_gap(gap)} older than {failed.backup_id}, level {prev.level.name}, copies in "
           f"{', '.join(prev.locations())}. Recovering from it loses {_gap(gap)} more data (everything written "
           f"after its snapshot). To use it: quit, then {resume} and retry this step")
    events.check("previous verified backup", "warning", msg)
    events.output("previous_backup_id", prev.backup_id)
    print(msg, flush=True)


def _gap(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return _age(seconds)


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
