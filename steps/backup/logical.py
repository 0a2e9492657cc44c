"""`runbook backup`: the daily full backup (section 3 of the plan, done right), run by cron or systemd.

Per database, under a lock: dump into a staging directory (steps.backup.dump: directory format, parallel jobs,
gzip level 1, exact row counts in the dump's snapshot, globals beside it) as a pipeline (steps.backup.pipeline):
each file is hashed and sent to every configured repository as pg_dump writes it, re-read from there once
pg_dump closed it, and read by `pg_restore -f /dev/null` as it is written (steps.backup.archive_check); then
compare the dump's size with the previous good backup, and only when every object was re-read and the archive
read back write the manifests and their `readable` records (steps.repository.publish.commit); then, only after
a full success, apply local retention. A failure leaves no manifest, and removes what reached the local
repository. The attachments directory, when configured, is captured
once per run under the same id. Off-site retention is `runbook prune`, which may use other credentials.

Exit codes: 0 ok; 1 a warning (size drop, retention failed) or published in some but not all
repositories; 2 published nowhere; 3 could not run (config, lock held, no repository usable). The reason
goes to stderr; everything goes to the log file; `backup-status.json` tells monitoring what happened.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from runbook import __version__
from runbook.errors import Exit, LockHeld, RunbookError
from runbook.logs import CommandLogging, command_logging
from steps.backup.lock import BackupLock
from steps.pg import rows
from steps.pg.tools import Conn
from steps.repository import layout
from steps.repository.config import RepositoryConfig
from steps.repository.configured import checked_stores
from steps.repository.manifest import Check, FilesManifest, Level, LogicalManifest, ObjectEntry, Tool, to_json
from steps.repository.signing import Signer, Trust
from steps.repository.store import MARKER, RepositoryError, Store, sha256_file

if TYPE_CHECKING:
    from steps.backup.archive_check import StreamingCheck
    from steps.backup.pipeline import DumpPipeline, Publisher
    from steps.encrypted.writing import Sealing

log = logging.getLogger("runbook.backup")

EXIT_OK, EXIT_WARNING, EXIT_FAILED, EXIT_CANNOT_RUN, EXIT_LOCKED = Exit.OK, Exit.WARNING, Exit.FAILED, Exit.CANNOT_RUN, Exit.LOCKED
STATUS: dict[int, str] = {EXIT_OK: "ok", EXIT_WARNING: "warning", EXIT_FAILED: "failed", EXIT_CANNOT_RUN: "could-not-run",
          EXIT_LOCKED: "locked"}
ATTACHMENTS = "attachments"


class Interrupted(Exception):
    """SIGTERM (systemd stop, cron kill): clean up and report."""


@dataclass
class Outcome:
    """What happened to one target (a database, or the attachments) in this run."""

    target: str
    exit_code: int = EXIT_OK
    backup_id: str | None = None
    published: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # repository -> reason
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the backup cannot carry: said every run, exit code unchanged
    error: str | None = None
    size_bytes: int | None = None
    snapshot_time: str | None = None
    level: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    retention: dict[str, Any] | None = None
    encrypted: dict[str, str] = field(default_factory=dict)  # repository -> epoch, where published encrypted

    @property
    def status(self) -> str:
        return STATUS[self.exit_code]

    def raise_to(self, code: int) -> None:
        self.exit_code = max(self.exit_code, code)

    def note_unusable(self, repositories: dict[str, str]) -> None:
        """A repository that could not be used is a failed copy from the start."""
        for name, reason in repositories.items():
            if reason != "ok":
                self.failed[name] = reason

    def settle_published(self) -> None:
        """Once every repository was tried: published nowhere fails, missing from some is a warning."""
        if not self.published:
            self.raise_to(EXIT_FAILED)
        elif self.failed:
            self.raise_to(EXIT_WARNING)

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status
        d["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        return d


def _now() -> datetime:
    return datetime.now(UTC)


def backup_logging(label: str, log_file: Path, *, console: bool = True) -> CommandLogging:
    """`runbook backup` and `runbook basebackup` set up their run's logging (runbook.logs) with their own label;
    a log file that cannot be written is the same could-not-run reason for both."""
    try:
        return command_logging(label, log_file, console=console)
    except OSError as e:
        raise RunbookError(f"cannot write the backup log {log_file}: {e.strerror}",
                           hint="set backup.log_file (or backup.state_dir) to a writable place") from None


def write_status_file(path: Path, data: dict[str, Any], label: str) -> None:
    """The run's status JSON for monitoring, replaced atomically; a failure is said on stderr, not raised."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        print(f"runbook: cannot write {label}: {e.strerror}", file=sys.stderr)


def load_keys(cfg: RepositoryConfig, log: logging.Logger) -> tuple[Signer, Trust]:
    """The key a backup signs with (required: an unsigned backup would be refused by every recovery) and the
    public keys it reads the repository with (the previous backup, retention). Raises SigningError."""
    from steps.repository.signing import signer_from_config, trust_from_config

    signer = signer_from_config(cfg)
    assert signer is not None
    trust = trust_from_config(cfg)
    if signer.key_id not in trust.keys:
        log.warning("the signing key %s (%s) is not among signing.public_keys: this host will not accept its own "
                    "backups", signer.key_id, signer.path)
    return signer, trust


def open_usable_stores(cfg: RepositoryConfig, repositories: dict[str, str], log: logging.Logger) -> list[Store]:
    """The configured repositories that can be used, local first; `repositories` gets "ok" or why not, each."""
    stores: list[Store] = []
    for which, got in checked_stores(cfg, RunbookError):
        if isinstance(got, RunbookError):
            repositories[which] = str(got)
            log.error("%s repository unusable: %s", which, got)
            continue
        try:
            if got.ensure_marker():
                log.info("%s: wrote the repository marker %s", got.describe(), MARKER)
        except RunbookError as e:
            repositories[which] = f"cannot write the repository marker {MARKER}: {e}"
            log.error("%s repository unusable: %s", which, repositories[which])
            continue
        repositories[which] = "ok"
        stores.append(got)
    return stores


class BackupRun:
    def __init__(self, cfg: RepositoryConfig, config_path: Path, dbs: list[str] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.dbs = list(dbs) if dbs else list(cfg.cluster.databases)
        self.conn = Conn(cfg.cluster.host, cfg.cluster.port, cfg.cluster.user)
        self.state_dir = cfg.state_dir()
        self.status_file = cfg.backup.status_file or self.state_dir / "backup-status.json"
        self.log_file = cfg.backup.log_file or self.state_dir / "backup.log"
        self.started_at = _now()
        self.backup_id: str | None = None
        self.outcomes: list[Outcome] = []
        self.repositories: dict[str, str] = {}
        self.stores: list[Store] = []
        self._locks: list[BackupLock] = []
        self.signer: Signer | None = None
        self.trust: Trust | None = None
        self.sealings: dict[str, Sealing | None] = {}  # repository -> the key it encrypts with (None: plaintext)
        self._settings_plain: dict[str, bytes] = {}  # backup id/database -> its sealed settings' plaintext, made once

    # --- the whole run ---------------------------------------------------------------------------

    def run(self, *, console: bool = True) -> int:
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise Interrupted("terminated (SIGTERM)")

        signal.signal(signal.SIGTERM, on_term)
        try:
            return self._run(console)
        finally:
            signal.signal(signal.SIGTERM, previous)
            for lock in self._locks:
                lock.release()

    def _run(self, console: bool) -> int:
        try:
            logs = backup_logging("backup", self.log_file, console=console)
        except RunbookError as e:
            return self._cannot_run(str(e))
        with logs:
            return self._logged_run()

    def _logged_run(self) -> int:
        log.info("runbook %s backup with %s: %s", __version__, self.config_path, ", ".join(self.dbs) or "no database")
        if not self.dbs:
            return self._cannot_run("no database to back up: list them in cluster.databases or pass --db NAME")
        try:
            self.signer, self.trust = load_keys(self.cfg, log)
        except RunbookError as e:
            return self._cannot_run(str(e))
        self._open_stores()
        if not self.stores:
            return self._cannot_run("no repository is usable: " + "; ".join(f"{k}: {v}" for k, v in self.repositories.items()))
        try:
            self._lock_and_pick_id()
        except RunbookError as e:
            return self._cannot_run(str(e), EXIT_LOCKED if isinstance(e, LockHeld) else EXIT_CANNOT_RUN)
        try:
            for db in self.dbs:
                self.outcomes.append(self._backup_db(db))
            if self.cfg.attachments is not None:
                self.outcomes.append(self._backup_attachments())
        except (Interrupted, KeyboardInterrupt) as e:
            out = Outcome(target="run", exit_code=EXIT_FAILED, backup_id=self.backup_id,
                          error=f"interrupted: {e or 'SIGINT'}; nothing more was published")
            log.error("%s", out.error)
            self.outcomes.append(out)
        return self._finish()

    def _cannot_run(self, reason: str, code: int = EXIT_CANNOT_RUN) -> int:
        """Nothing was backed up: `code` is EXIT_LOCKED when another backup holds the lock, else EXIT_CANNOT_RUN."""
        self.outcomes.append(Outcome(target="run", exit_code=code, error=reason))
        print(f"runbook: backup could not run: {reason}", file=sys.stderr)
        log.debug("could not run: %s", reason)
        self._write_status()
        return code

    def _finish(self) -> int:
        code = max((o.exit_code for o in self.outcomes), default=EXIT_OK)
        for o in self.outcomes:
            where = ", ".join(o.published) or "nowhere"
            published = f"published in {where}" if o.published else "published nowhere"
            if o.exit_code == EXIT_OK:
                line = f"{o.target} {o.backup_id}: ok, {_mb(o.size_bytes)}, {o.level} in {where}"
                if o.encrypted:
                    line += f" (encrypted in {', '.join(o.encrypted)})"
                print(line)
                log.debug("%s", line)
                continue
            reasons = ([o.error] if o.error else []) + [f"{k}: {v}" for k, v in o.failed.items()] + o.warnings
            head = f"{o.target} {o.backup_id or ''}".strip()
            msg = f"backup of {head}: {o.status} ({published}): " + "; ".join(r.replace("\n", " ") for r in reasons)
            print(f"runbook: {msg}", file=sys.stderr)
            log.debug("%s", msg)
        self._write_status()
        log.info("backup run finished: %s (exit %d)", STATUS[code], code)
        return code

    def _write_status(self) -> None:
        code = max((o.exit_code for o in self.outcomes), default=EXIT_OK)
        data = {
            "format_version": 1, "tool": {"name": "runbook", "version": __version__}, "host": socket.gethostname(),
            "config": str(self.config_path), "backup_id": self.backup_id,
            "started_at": self.started_at.isoformat(), "finished_at": _now().isoformat(),
            "exit_code": code, "status": STATUS[code], "repositories": self.repositories,
            "targets": {o.target: o.as_json() for o in self.outcomes},
        }
        write_status_file(self.status_file, data, f"the backup status {self.status_file}")

    # --- set-up ----------------------------------------------------------------------------------

    def _open_stores(self) -> None:
        self.stores += open_usable_stores(self.cfg, self.repositories, log)
        self._seal_stores()

    def _seal_stores(self) -> None:
        """The key each encrypting repository writes with (steps.encrypted.writing): a repository whose epoch
        cannot be had (unreachable, refused) is unusable for this run, as one that cannot be written."""
        from steps.encrypted.writing import sealing_for

        kept = []
        for store in self.stores:
            try:
                self.sealings[store.name] = sealing_for(self.cfg, store, self.signer)
            except RunbookError as e:
                self.repositories[store.name] = f"cannot encrypt: {e}"
                log.error("%s repository unusable: %s", store.name, self.repositories[store.name])
                continue
            kept.append(store)
        self.stores = kept

    def _stored_manifest(self, manifest: LogicalManifest | FilesManifest, store: Store, prefix: str,
                         stored: dict[str, tuple[int, str]]) -> tuple[list[ObjectEntry], bytes]:
        """The manifest `store` gets: as is for a plaintext repository; for an encrypted one with each object's
        stored size and sha256 and the epoch (each repository signs its own), and a logical backup's database
        settings moved into their own encrypted object (steps.encrypted.writing.Sealing.seal_settings)."""
        sealing = self.sealings.get(store.name)
        if sealing is None:
            return manifest.objects, to_json(manifest)
        from steps.encrypted.writing import with_stored

        objects = with_stored(manifest.objects, stored)
        update: dict[str, Any] = {}
        if isinstance(manifest, LogicalManifest):  # its settings' values can be secrets: sealed, not in clear
            from steps.repository.manifest import settings_json

            plain = self._settings_plain.setdefault(f"{manifest.backup_id}/{manifest.database.name}",
                                                    settings_json(manifest.database))
            facts, entry = sealing.seal_settings(store, prefix, manifest.database, plain)
            objects.append(entry)
            update["database"] = facts.model_dump(mode="json")
        data = manifest.model_dump(mode="json") | update | {
            "objects": [o.model_dump(mode="json") for o in objects],
            "encryption": sealing.encryption().model_dump(mode="json")}
        return objects, to_json(type(manifest).model_validate(data))

    def _lock_dir(self) -> Path:
        if self.cfg.backup.lock_dir is not None:
            return self.cfg.backup.lock_dir
        if self.cfg.local is not None and self.repositories.get("local") == "ok":
            return self.cfg.local.path / "locks"
        return self.state_dir / "locks"

    def _lock_and_pick_id(self) -> None:
        lock_dir = self._lock_dir()
        targets = [self.conn.describe(db) for db in self.dbs]
        if self.cfg.attachments is not None:
            targets.append(f"attachments:{self.cfg.attachments.path}")
        for target in targets:
            self._locks.append(BackupLock.take(lock_dir, target))
        # One id for the whole run (the attachments pair with the dumps by it), never reused for a target.
        last = max((lk.last_id for lk in self._locks if lk.last_id), default="")
        bid = layout.backup_id(_now())
        while bid <= last:
            time.sleep(0.2)
            bid = layout.backup_id(_now())
        self.backup_id = bid
        for lk in self._locks:
            lk.record(bid)
        self._remove_stale_staging()

    def _remove_stale_staging(self) -> None:
        """What killed backups left in the staging directory (steps.backup.staging), removed under our lock."""
        from steps.backup.staging import fallback_root, remove_stale_logged

        if self.cfg.backup.staging_dir is not None:
            root = self.cfg.backup.staging_dir
        elif self.cfg.local is not None and self.repositories.get("local") == "ok":
            root = self.cfg.local.path / ".staging"
        else:
            root = fallback_root(self.cfg)
        remove_stale_logged(root, self._lock_dir(), log)

    def _staging_root(self) -> Path:
        """Where dumps are written before publishing: inside the local repository when it is usable (the
        same filesystem, so publishing is a hard link), else `backup.staging_dir`, else the state directory's
        (steps.backup.staging.fallback_root)."""
        from steps.repository.store import local_error

        try:
            if self.cfg.backup.staging_dir is not None:
                root = self.cfg.backup.staging_dir
            elif self.cfg.local is not None and self.repositories.get("local") == "ok":
                root = self.cfg.local.path / ".staging"
            else:
                from steps.backup.staging import fallback_root

                root = fallback_root(self.cfg)
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise RunbookError(str(local_error(e, "creating the staging directory")),
                               hint="set backup.staging_dir to a directory with room for one dump") from None
        return root

    # --- one database ----------------------------------------------------------------------------

    def _backup_db(self, db: str) -> Outcome:
        from steps.backup.dump import take_dump

        assert self.backup_id is not None
        from steps.repository.store import local_error

        out = Outcome(target=db, backup_id=self.backup_id)
        out.note_unusable(self.repositories)
        staging: Path | None = None
        pipe: _Pipe | None = None
        try:
            log.info("backing up %s as %s", self.conn.describe(db), self.backup_id)
            t0 = time.monotonic()
            try:
                staging = self._staging_root() / f"{db}-{self.backup_id}"
                shutil.rmtree(staging, ignore_errors=True)
                pipe = self._pipe(db, staging)
                try:
                    result = take_dump(self.conn, db, staging, jobs=self.cfg.backup.jobs,
                                       compression=self.cfg.backup.compression, pipeline=pipe.dump)
                except OSError as e:
                    raise local_error(e, f"writing the dump into {staging}") from None
            except RunbookError as e:
                out.error = str(e)
                out.raise_to(EXIT_FAILED)
                log.error("backup of %s failed, nothing published: %s", db, e)
                return out
            out.timings.update(result.timings)
            out.timings["dump_total_s"] = time.monotonic() - t0
            out.timings["hash_total_s"] = pipe.dump.timings["hash_s"]
            out.size_bytes = result.size_bytes
            out.snapshot_time = result.snapshot_time.isoformat()
            log.info("dumped %s: %s in %d objects, %d tables (%.1f s; each file hashed and sent on as it was "
                     "written, %d of them finished while pg_dump ran)", db, _mb(result.size_bytes),
                     len(result.objects), len(result.row_counts), out.timings["dump_total_s"],
                     pipe.dump.finished_during_dump)
            manifest = LogicalManifest(
                backup_id=self.backup_id, database=result.facts, snapshot_time=result.snapshot_time,
                started_at=result.started_at, stopped_at=result.stopped_at, dump=result.dump, globals=result.globals,
                row_counts=result.row_counts, row_counts_definition=rows.DEFINITION,
                row_counts_skipped=result.row_counts_skipped, objects=result.objects, tool=Tool(version=__version__),
                host=socket.gethostname(), user_mappings=result.user_mappings, notes=result.notes,
            )
            for note in result.notes:
                out.notes.append(note)
                log.warning("%s: %s", db, note)
            self._size_check(out, manifest)
            prefix = layout.logical_prefix(result.facts.system_identifier, db, self.backup_id)
            self._verify_and_publish(out, pipe, prefix, staging, manifest)
        finally:
            if pipe is not None:
                pipe.close(keep_local="local" in out.published)
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        if out.published and out.exit_code == EXIT_OK:
            self._local_retention(out, db=db)
        return out

    def _pipe(self, db: str, staging: Path) -> _Pipe:
        """The pipeline of one dump (steps.backup.pipeline): each finished file hashed, stored in every usable
        repository and re-read, and fed to the overlapped read check (steps.backup.archive_check)."""
        from steps.backup.archive_check import StreamingCheck
        from steps.backup.pipeline import SHADOW, DumpPipeline, Publisher

        def workers(store: Store) -> int:
            return self.cfg.s3.max_concurrency if store.name == "s3" and self.cfg.s3 else 1

        check = StreamingCheck(staging / layout.DUMP_DIR, staging / SHADOW, self.cfg.backup.compression)

        def on_file(name: str) -> None:
            if name == "toc.dat":
                check.start()
            else:
                check.file_done(name)

        bid = self.backup_id
        assert bid is not None
        publisher = Publisher(self.stores, staging, workers, self.sealings)
        dump = DumpPipeline(staging, layout.DUMP_DIR, publisher,
                            prefix_of=lambda sysid: layout.logical_prefix(sysid, db, bid), on_file=on_file)
        return _Pipe(dump, publisher, check)

    def _verify_and_publish(self, out: Outcome, pipe: _Pipe, prefix: str, staging: Path,
                            manifest: LogicalManifest) -> None:
        """The objects were stored and re-read while the dump ran, and the read check read them as they came;
        here the last ones are waited for, and the manifests wait for both."""
        from steps.backup import archive_check

        def checked() -> list[Check]:
            t1 = time.monotonic()
            try:
                if pipe.check.overlapped:
                    try:
                        return pipe.check.result()
                    except archive_check.NotOverlapped as e:
                        log.info("%s: the read check runs on the finished dump: %s", out.target, e)
                elif pipe.check.why_not:
                    log.info("%s: the read check runs on the finished dump: %s", out.target, pipe.check.why_not)
                return archive_check.check_archive(staging / layout.DUMP_DIR)
            finally:
                out.timings["check_after_dump_s"] = time.monotonic() - t1

        pool = ThreadPoolExecutor(max_workers=1)
        try:
            checks_future = pool.submit(checked)
            stored: list[Store] = []
            stored_objects: dict[str, dict[str, tuple[int, str]]] = {}
            for st in pipe.publisher.states:  # every object was finished and re-read before take_dump returned
                stored_objects[st.store.name] = st.stored_objects
                out.timings[f"publish_{st.store.name}_busy_s"] = st.busy_s
                out.timings[f"publish_{st.store.name}_finish_s"] = st.finish_s
                out.timings[f"publish_{st.store.name}_reread_s"] = st.reread_s
                if st.error is not None:
                    out.failed[st.store.name] = str(st.error)
                    log.error("%s: not published in %s: %s", out.target, st.store.describe(), st.error)
                else:
                    stored.append(st.store)
            try:
                checks = checks_future.result()
            except RunbookError as e:
                out.error = str(e)
                out.failed.update({s.name: "not published: the archive checks failed" for s in stored})
                out.raise_to(EXIT_FAILED)
                log.error("%s: the dump cannot be read back, nothing published: %s", out.target, e)
                return
            log.info("archive readable: %s", "; ".join(c.detail for c in checks))
            self._commit_all(out, stored, prefix, lambda s: self._stored_manifest(manifest, s, prefix, stored_objects[s.name]),
                             Level.readable, checks)
        finally:
            pool.shutdown(wait=False)

    def _store_all(self, out: Outcome, prefix: str, staging: Path, objects: list[ObjectEntry],
                   stored_objects: dict[str, dict[str, tuple[int, str]]]) -> list[Store]:
        """Every object in every repository (encrypted where the repository is: `stored_objects` gets the stored
        sizes and sha256 per repository)."""
        from steps.repository.publish import store_objects

        stored: list[Store] = []
        for store in self.stores:
            workers = self.cfg.s3.max_concurrency if store.name == "s3" and self.cfg.s3 else 1
            t0 = time.monotonic()
            sealing = self.sealings.get(store.name)
            try:
                timings = store_objects(store, prefix, staging, objects, workers=workers,
                                        encrypt=sealing.encrypt_file if sealing is not None else None,
                                        stored=stored_objects.setdefault(store.name, {}))
            except RepositoryError as e:
                out.failed[store.name] = str(e)
                log.error("%s: not published in %s: %s", out.target, store.describe(), e)
                continue
            finally:
                out.timings[f"publish_{store.name}_s"] = time.monotonic() - t0
            for k, v in timings.items():
                out.timings[f"publish_{store.name}_{k}"] = v
            stored.append(store)
        return stored

    def _commit_all(self, out: Outcome, stored: list[Store], prefix: str,
                    manifest: Callable[[Store], tuple[list[ObjectEntry], bytes]], level: Level,
                    checks: list[Check]) -> None:
        """The manifest of each repository (`manifest(store)`: its objects and bytes) and its record."""
        from steps.repository.publish import commit

        for store in stored:
            t0 = time.monotonic()
            try:
                assert self.signer is not None
                objects, data = manifest(store)
                commit(store, prefix, objects, data, backup_id=out.backup_id or "", level=level, checks=checks,
                       signer=self.signer)
            except RepositoryError as e:
                out.failed[store.name] = str(e)
                log.error("%s: not published in %s: %s", out.target, store.describe(), e)
                continue
            out.timings[f"publish_{store.name}_s"] = out.timings.get(f"publish_{store.name}_s", 0) + time.monotonic() - t0
            out.published.append(store.name)
            if (sealing := self.sealings.get(store.name)) is not None:
                out.encrypted[store.name] = sealing.epoch
            out.level = level.name
            log.info("%s: published in %s (%s)", out.target, store.describe(), level.name)
        out.settle_published()

    def _size_check(self, out: Outcome, manifest: LogicalManifest) -> None:
        """A dump much smaller than the previous good backup is a warning. The first repository (local first)
        that holds a previous good backup answers: reading the others too (every manifest, record and signature
        of the database's backups, over the network for S3) would only cost round trips for the same answer."""
        from steps.repository.catalogue import pick, scan

        assert self.trust is not None
        prev = None
        for store in self.stores:
            prev = pick(scan([store], trust=self.trust, db=manifest.database.name, kinds=("logical",)).entries,
                        manifest.database.name)
            if prev is not None:
                break
        if prev is None or prev.size_bytes <= 0:
            return
        new, old = manifest.size_bytes, prev.size_bytes
        limit = self.cfg.backup.max_size_drop
        if new < old * (1 - limit):
            msg = (f"the dump is {100 * (1 - new / old):.0f}% smaller than the previous backup {prev.backup_id} "
                   f"({_mb(new)} vs {_mb(old)}; limit {limit:.0%}): check that no data was lost")
            out.warnings.append(msg)
            out.raise_to(EXIT_WARNING)
            log.warning("%s", msg)

    def _local_retention(self, out: Outcome, *, db: str | None = None, files: bool = False) -> None:
        from steps.repository.prune import prune_store

        local = next((s for s in self.stores if s.name == "local"), None)
        if local is None or "local" not in out.published:
            return
        t0 = time.monotonic()
        try:
            assert self.trust is not None
            report = prune_store(local, self.cfg.retention, trust=self.trust, now=_now(), db=db, logical=not files,
                                 files=files)
        except RepositoryError as e:
            out.warnings.append(f"local retention failed: {e}")
            out.raise_to(EXIT_WARNING)
            log.error("local retention failed: %s", e)
            return
        out.timings["retention_s"] = time.monotonic() - t0
        out.retention = {"kept": len(report.kept), "deleted": [what for what, _ in report.deleted]}
        for what, why in report.deleted:
            log.info("retention: deleted %s (%s)", what, why)

    # --- the attachments -------------------------------------------------------------------------

    def _backup_attachments(self) -> Outcome:
        from steps.backup.attachments import capture

        assert self.cfg.attachments is not None and self.backup_id is not None
        out = Outcome(target=ATTACHMENTS, backup_id=self.backup_id)
        out.note_unusable(self.repositories)
        staging: Path | None = None
        try:
            staging = self._staging_root() / f"attachments-{self.backup_id}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True, mode=0o700)
            t0 = time.monotonic()
            tar = staging / layout.ATTACHMENTS_TAR
            cap = capture(self.cfg.attachments.path, tar)
            size, digest = sha256_file(tar)
            out.timings["capture_s"] = time.monotonic() - t0
            out.size_bytes = size
            for rel in cap.skipped:
                out.warnings.append(f"skipped {rel}: not a regular file")
            objects = [ObjectEntry(path=layout.ATTACHMENTS_TAR, size=size, sha256=digest)]
            manifest = FilesManifest(backup_id=self.backup_id, source=str(self.cfg.attachments.path),
                                     created_at=_now(), files=cap.files, objects=objects, tool=Tool(version=__version__))
            log.info("attachments: %d files, %s", len(cap.files), _mb(size))
            checks = [Check(name="archived", status="ok", detail=f"{len(cap.files)} files hashed as they were archived")]
            prefix = layout.files_prefix(self.backup_id)
            stored_objects: dict[str, dict[str, tuple[int, str]]] = {}
            stored = self._store_all(out, prefix, staging, objects, stored_objects)
            self._commit_all(out, stored, prefix, lambda s: self._stored_manifest(manifest, s, prefix, stored_objects[s.name]),
                             Level.checksummed, checks)
        except (RunbookError, OSError) as e:
            out.error = str(e)
            out.raise_to(EXIT_FAILED)
            log.error("attachments not captured: %s", e)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        if out.published and out.exit_code == EXIT_OK and not out.warnings:
            self._local_retention(out, files=True)
        return out


@dataclass
class _Pipe:
    """One dump's pipeline: the watcher and hasher, the publisher, the overlapped read check."""

    dump: DumpPipeline
    publisher: Publisher
    check: StreamingCheck

    def close(self, *, keep_local: bool) -> None:
        """Stop every part; unless the local repository got its manifest, remove what reached it."""
        self.publisher.close()
        self.dump.stop()
        self.check.abort()
        if not keep_local:
            self.publisher.cleanup_local()


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"
