"""`runbook verify-backup`: prove a backup by restoring it, and record the proof beside it.

1. **Pick** a backup from the catalogue: `--backup ID`, or the newest (`--latest`, the default) of `--kind`
   (logical, the default, or base), in one repository (`--from`; default the first copy, local first).
2. **Fetch** every object into a scratch directory, each object's sha256 checked as it streams
   (a mismatch names the object); a logical backup in a local repository is checked where it lies and
   restored from there, read-only (no copy). For a base backup, also the archived WAL from its start to its stop
   segment, each file checked (a gap names the first missing segment).
3. **Restore** into a throwaway cluster on this host (steps.pg.server: under a 0755 temp dir, run as the
   server's user when we are root, listening on its own socket only): a logical backup with
   restore-logical's machinery (`initdb`, globals, `pg_restore --jobs`); a base backup extracted with
   every file checked against the server's backup_manifest (each tablespace into `<scratch>/cluster/
   tablespaces/<oid>`, with tablespace_map rewritten to match), then replayed with its WAL until consistent
   (`recovery_target = 'immediate'`), promoted, with archiving off (the copy shares the production system
   identifier and must never write into its archive).
4. **Check** the database as the drills do (steps.verify_database: `checks.expect_tables`, per-table row
   counts equal to the manifest's for a logical backup, `checks.smoke`).
5. **Record** a verification record beside the backup (level `restored`, passed or not, when, the checks, the
   host, the timings, the restored size); the manifest is never touched. A failed record demotes the
   backup: the catalogue does not pick it for a recovery until a later verification passes.

The scratch cluster is removed whatever happens (try/finally; SIGTERM is turned into the same path).
A failure of this host rather than of the backup (the scratch disk filling up, initdb failing) writes no
record: the backup's standing is not judged by it. Exit codes: 0 verified, 2 failed (the backup, or the
scratch disk filled), 3 could not run (config, repository, lock, this host).

Two runs on one host do not overlap: an flock in the state directory; the second waits `--lock-wait`
seconds for the first to finish, then refuses (exit 3), naming the holder.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from runbook.errors import LockHeld, RunbookError
from runbook.lockfile import LockFile

EXIT_VERIFIED = 0
EXIT_FAILED = 2
EXIT_CANNOT_RUN = 3
NO_SPACE = "No space left on device"


class BackupBad(Exception):
    """The backup itself failed a check: recorded as a failed verification."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


class ScratchFull(RunbookError):
    """The scratch disk filled up during the test restore: this host's problem, not the backup's."""

    exit_code = EXIT_FAILED


class CannotRun(RunbookError):
    exit_code = EXIT_CANNOT_RUN


class Terminated(BaseException):
    """SIGTERM: unwinds through every `finally`, so the scratch cluster is removed."""


@dataclass
class CheckResult:
    name: str
    status: str  # ok | failed
    detail: str = ""


@dataclass
class Outcome:
    exit_code: int = EXIT_CANNOT_RUN
    backup_id: str | None = None
    kind: str | None = None
    db: str | None = None
    cluster: str | None = None
    repository: str | None = None
    passed: bool | None = None
    checks: list[CheckResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    restored_size_bytes: int | None = None
    record: str | None = None
    error: str | None = None
    scratch: str | None = None
    scratch_removed: bool | None = None

    def as_json(self) -> dict[str, Any]:
        status = {EXIT_VERIFIED: "verified", EXIT_FAILED: "failed"}.get(self.exit_code, "could not run")
        return {"status": status, "exit_code": self.exit_code, "backup_id": self.backup_id, "kind": self.kind,
                "db": self.db, "cluster": self.cluster, "repository": self.repository, "passed": self.passed,
                "checks": [c.__dict__ for c in self.checks], "timings": self.timings,
                "restored_size_bytes": self.restored_size_bytes, "record": self.record, "error": self.error,
                "scratch": self.scratch, "scratch_removed": self.scratch_removed}


# --- the lock ---------------------------------------------------------------------------------------------


class VerifyLock(LockFile):
    """One verify-backup at a time on this host: wait up to `wait_s` for the holder, then refuse."""

    file_mode = 0o640
    dir_mode = 0o750

    def __init__(self, lock_dir: Path, wait_s: float, what: str) -> None:
        super().__init__(lock_dir / "verify-backup.lock", wait=wait_s)
        self.lock_dir = lock_dir
        self.what = what

    def holder_record(self) -> dict[str, Any]:
        return {**super().holder_record(), "what": self.what}

    def describe(self, holder: dict[str, Any] | None) -> str:
        if not holder:
            return "another process"
        return (f"pid {holder.get('pid')} ({holder.get('user')}@{holder.get('host')}) verifying "
                f"{holder.get('what')} since {holder.get('since')}")

    def waiting(self, holder: dict[str, Any] | None, wait: float) -> None:
        print(f"verify-backup: another verify-backup holds {self.path}; waiting up to {wait:g} s",
              file=sys.stderr, flush=True)

    def refusal(self, holder: dict[str, Any] | None, wait: float) -> LockHeld:
        return LockHeld(
            f"another verify-backup is running on this host: {self.describe(holder)}; waited {wait:g} s, refusing",
            hint="two test restores at once would compete for this host's disk and cores; "
                 "let it finish, or raise --lock-wait")

    def cannot_open(self, error: OSError) -> CannotRun:
        return CannotRun(f"cannot create the verify-backup lock in {self.lock_dir}: {error.strerror}",
                         hint="set backup.state_dir to a directory this user can write")


# --- events from the reused actions ---------------------------------------------------------------------


class _Collect:
    """Stands in for steps.events.Events when an action's `main` runs inside verify-backup."""

    def __init__(self) -> None:
        self.checks: list[CheckResult] = []
        self.outputs: dict[str, Any] = {}

    def progress(self, done: float, total: float | None, unit: str = "", label: str = "") -> None:
        return None

    def check(self, name: str, status: str, hint: str = "") -> None:
        self.checks.append(CheckResult(name, status, hint))

    def output(self, name: str, value: Any) -> None:
        self.outputs[name] = value

    def close(self) -> None:
        return None


def _no_space(text: str) -> bool:
    return NO_SPACE in text or "could not extend file" in text or "could not write to file" in text


# --- the run --------------------------------------------------------------------------------------------


class VerifyRun:
    def __init__(self, cfg: Any, config_path: Path, *, backup_id: str | None = None, kind: str = "logical",
                 db: str | None = None, source: str = "any", scratch_root: Path | None = None,
                 lock_wait: float = 60.0, jobs: int = 2, superuser: str = "postgres",
                 timeout_s: float = 4 * 3600, say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.backup_id = backup_id
        self.kind = kind
        self.db = db
        self.source = source
        self.scratch_root = scratch_root or Path(os.environ.get("RUNBOOK_SCRATCH_DIR", "/var/tmp"))
        self.lock_wait = lock_wait
        self.jobs = jobs
        self.superuser = superuser
        self.timeout_s = timeout_s
        self.say = say or (lambda text: print(f"verify-backup: {text}", flush=True))
        self.out = Outcome()
        self.log = io.StringIO()  # what the reused actions printed: its tail goes into failures

    # The whole run, with SIGTERM turned into an exception so that every `finally` runs.
    def run(self) -> Outcome:
        previous = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: FrameType | None) -> None:
            raise Terminated()

        in_main = _main_thread()
        if in_main:
            signal.signal(signal.SIGTERM, on_term)
        t0 = time.monotonic()
        try:
            with VerifyLock(self.cfg.state_dir() / "locks", self.lock_wait,
                            self.backup_id or f"the newest {self.kind} backup"):
                self._run()
        except Terminated:
            self.out.error = "terminated (SIGTERM): the scratch cluster was removed, no record written"
            self.out.exit_code = EXIT_CANNOT_RUN
        except LockHeld as e:
            self.out.error = str(e)
            self.out.exit_code = EXIT_CANNOT_RUN
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
        self.out.timings["total_s"] = round(time.monotonic() - t0, 2)
        return self.out

    def _run(self) -> None:
        from steps.repository.catalogue import scan, usable_copies
        from steps.repository.configured import open_stores
        from steps.repository.manifest import Level

        stores = []
        problems = []
        for which in ("local", "s3"):
            if getattr(self.cfg, which) is None or self.source not in ("any", which):
                continue
            try:
                stores.append(open_stores(self.cfg, which)[0])  # type: ignore[arg-type]
            except RunbookError as e:
                problems.append(f"{which}: {e}")
        if not stores:
            self.out.error = "no usable repository: " + ("; ".join(problems) or f"none configured for {self.source}")
            return
        kinds = ("logical", "base") if self.backup_id else ((self.kind,))
        cat = scan(stores, db=self.db, kinds=kinds)  # type: ignore[arg-type]
        for name, err in cat.errors.items():
            problems.append(f"{name}: {err}")
        entries = [e for e in cat.entries + cat.base if self.db is None or e.kind == "base" or e.db == self.db]
        if self.backup_id:
            entries = [e for e in entries if e.backup_id == self.backup_id]
            entries = [e for e in entries if e.kind == self.kind] or entries
        else:
            entries = [e for e in entries if e.kind == self.kind]
        if not entries:
            what = f"backup {self.backup_id}" if self.backup_id else f"{self.kind} backup" + \
                (f" of {self.db}" if self.db else "")
            self.out.error = f"no {what} in {', '.join(s.describe() for s in stores)}" + \
                (f" (unreadable: {'; '.join(problems)})" if problems else "")
            return
        entry = entries[0]  # newest first
        copies = [entry.copies[n] for n in entry.locations() if self.source in ("any", n)]
        copy = copies[0]
        self.out.backup_id, self.out.kind, self.out.cluster = entry.backup_id, entry.kind, entry.cluster
        self.out.db = entry.db or None
        self.out.repository = copy.store.name
        usable = bool(usable_copies(entry, Level.readable, copy.store.name))
        self.say(f"verifying {entry.kind} backup {entry.backup_id}" + (f" of {entry.db}" if entry.db else "")
                 + f" (cluster {entry.cluster}, {entry.size_bytes / 1e6:.1f} MB, level {copy.level.name}"
                 + ("" if usable else ", not picked by a recovery now") + f") from {copy.store.describe()}")
        scratch = self._make_scratch()
        self.out.scratch = str(scratch)
        from steps.pg.server import Server

        server = Server(scratch / "cluster" / "data", scratch / "run")
        recorded = False
        try:
            try:
                if entry.kind == "logical":
                    self._verify_logical(entry, copy, scratch, server)
                else:
                    self._verify_base(entry, copy, scratch, server)
                self.out.passed = all(c.status != "failed" for c in self.out.checks)
            except BackupBad as e:
                self.out.checks.append(CheckResult(e.check, "failed", e.detail))
                self.out.passed = False
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise ScratchFull(f"the scratch disk filled up during the test restore ({scratch}): "
                                      f"{e.strerror}") from None
                raise CannotRun(f"the test restore could not run: {e}") from None
            self._stop(server)
            self._record(entry, copy)
            recorded = True
        except ScratchFull as e:
            self.out.error = f"{e.message}; the backup was not judged (no record written)"
            self.out.exit_code = EXIT_FAILED
        except RunbookError as e:
            self.out.error = str(e)
            self.out.exit_code = EXIT_CANNOT_RUN
        finally:
            t_clean = time.monotonic()
            _kill_descendants()  # a child cut short (initdb, pg_restore under runuser) must not outlive us
            self._stop(server)
            for _ in range(20):
                shutil.rmtree(scratch, ignore_errors=True)
                if not scratch.exists():
                    break
                time.sleep(0.1)
            self.out.scratch_removed = not scratch.exists()
            self.out.timings["cleanup_s"] = round(time.monotonic() - t_clean, 2)
        if recorded:
            self.out.exit_code = EXIT_VERIFIED if self.out.passed else EXIT_FAILED

    def _make_scratch(self) -> Path:
        try:
            self.scratch_root.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix="runbook-verify-", dir=self.scratch_root))
            os.chmod(scratch, 0o755)  # the server's user must traverse it
            (scratch / "cluster").mkdir()
        except OSError as e:
            raise CannotRun(f"cannot make a scratch directory under {self.scratch_root}: {e.strerror}",
                            hint="pass --scratch-dir DIR (or $RUNBOOK_SCRATCH_DIR) with room for the restore") from None
        return scratch

    def _stop(self, server: Any) -> None:
        from steps.pg.server import as_server
        from steps.pg.tools import PG_BIN

        if (server.datadir / "postmaster.pid").exists():
            subprocess.run(as_server([os.path.join(PG_BIN, "pg_ctl"), "-D", str(server.datadir), "-m", "immediate",
                                      "-w", "-t", "60", "stop"]), capture_output=True)

    # --- fetching ---------------------------------------------------------------------------------

    def _fetch(self, copy: Any, manifest: Any, dest: Path, *, in_place: bool = False) -> Path:
        """Every object checked against the manifest; returns the directory to restore from. From S3 (or
        unless `in_place`) the objects are downloaded into `dest` as they are hashed; a local repository's
        copy, with `in_place`, is hashed where it lies (two files at a time) and restored from there,
        read-only: no copy of the dump is made (it is the largest part of a test restore's overhead)."""
        from steps.repository import layout
        from steps.repository.manifest import sha256_bytes
        from steps.repository.store import CorruptObject, LocalStore, NotFound

        t0 = time.monotonic()
        data = copy.store.get_bytes(copy.prefix + layout.MANIFEST)
        if sha256_bytes(data) != copy.manifest_sha256:
            raise BackupBad("manifest", f"{copy.prefix}{layout.MANIFEST} changed while it was read")
        if in_place and isinstance(copy.store, LocalStore):
            self._check_in_place(copy, manifest)
            self.out.timings["fetch_s"] = round(time.monotonic() - t0, 2)
            return copy.store.root / copy.prefix
        dest.mkdir(parents=True, exist_ok=True)
        for o in manifest.objects:
            try:
                copy.store.fetch_file(copy.prefix + o.path, dest / o.path, size=o.size, sha256=o.sha256)
            except CorruptObject:
                raise BackupBad(f"sha256 of {o.path}", f"{copy.prefix}{o.path} does not match the manifest "
                                f"(expected sha256 {o.sha256}, {o.size} bytes): altered after the backup") from None
            except NotFound:
                raise BackupBad(f"object {o.path}", f"{copy.prefix}{o.path} is missing from "
                                f"{copy.store.describe()}") from None
        (dest / layout.MANIFEST).write_bytes(data)
        self.out.checks.append(CheckResult("sha256 of every object", "ok",
                                           f"{len(manifest.objects)} objects, {manifest.size_bytes / 1e6:.1f} MB"))
        self.out.timings["fetch_s"] = round(time.monotonic() - t0, 2)
        return dest

    def _check_in_place(self, copy: Any, manifest: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from steps.repository.store import RepositoryError, sha256_file

        root = copy.store.root / copy.prefix

        def one(o: Any) -> tuple[Any, tuple[int, str] | None]:
            path = root / o.path
            try:
                return o, sha256_file(path)
            except FileNotFoundError:
                return o, None
            except OSError as e:
                raise RepositoryError(f"reading {path}: {e.strerror}") from None

        with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib releases the GIL: two cores, two files
            results = list(pool.map(one, sorted(manifest.objects, key=lambda o: -o.size)))
        for o, got in results:
            if got is None:
                raise BackupBad(f"object {o.path}", f"{copy.prefix}{o.path} is missing from {copy.store.describe()}")
            if got != (o.size, o.sha256):
                raise BackupBad(f"sha256 of {o.path}", f"{copy.prefix}{o.path} does not match the manifest "
                                f"(expected sha256 {o.sha256}, {o.size} bytes; read {got[1]}, {got[0]} bytes): "
                                "altered after the backup")
        self.out.checks.append(CheckResult("sha256 of every object", "ok", f"{len(manifest.objects)} objects, "
                                           f"{manifest.size_bytes / 1e6:.1f} MB, checked in place"))

    # --- logical --------------------------------------------------------------------------------

    def _start_scratch(self, server: Any) -> None:
        try:
            server.initdb()
            server.start("fsync=off", "full_page_writes=off", "synchronous_commit=off", "wal_level=minimal",
                         "max_wal_senders=0", "autovacuum=off", "archive_mode=off", "max_wal_size=4GB")
        except RunbookError as e:
            if _no_space(str(e)):
                raise ScratchFull(f"the scratch disk filled up while making the scratch cluster: {e.message}") from None
            raise CannotRun(f"cannot run a scratch cluster on this host: {e.message}",
                            hint="verify-backup needs the PostgreSQL 15 server (postgresql-15)") from None

    def _verify_logical(self, entry: Any, copy: Any, scratch: Path, server: Any) -> None:
        import threading

        from steps import restore_logical

        m = entry.manifest
        fetched = scratch / "fetch"
        # The scratch cluster is made (initdb, start) while the backup is fetched: neither waits for the other.
        made: list[BaseException | float] = []

        def make() -> None:
            t0 = time.monotonic()
            try:
                self._start_scratch(server)
                made.append(time.monotonic() - t0)
            except BaseException as e:  # noqa: BLE001 - raised again in the main thread
                made.append(e)

        maker = threading.Thread(target=make, name="scratch-cluster", daemon=True)
        maker.start()
        try:
            fetched = self._fetch(copy, m, fetched, in_place=True)
        finally:
            maker.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        self.out.timings["scratch_s"] = round(made[0], 2)
        t1 = time.monotonic()
        sink = _Collect()
        args = restore_logical.Args(backup_dir=str(fetched), db=m.database.name, jobs=self.jobs,
                                    host=str(server.socket_dir), port=server.port, user=self.superuser,
                                    analyze=False, verify=False)
        with contextlib.redirect_stdout(self.log):
            code = restore_logical.main(args, sink)  # type: ignore[arg-type]
        self.out.timings["restore_s"] = round(time.monotonic() - t1, 2)
        if code != 0:
            failed = [c for c in sink.checks if c.status == "failed"]
            detail = failed[-1].detail if failed else self._log_tail()
            if _no_space(detail) or _no_space(self.log.getvalue()[-4000:]):
                raise ScratchFull(f"the scratch disk filled up during the test restore: {_last_line(detail)}")
            raise BackupBad(failed[-1].name if failed else "restore", detail)
        self.out.checks.append(CheckResult("pg_restore", "ok", f"{m.database.name} restored in "
                                           f"{self.out.timings['restore_s']:.1f} s"))
        self.out.restored_size_bytes = self._size(server, m.database.name)
        self._checks(server, [m.database.name], fetched)

    # --- base -----------------------------------------------------------------------------------

    def _verify_base(self, entry: Any, copy: Any, scratch: Path, server: Any) -> None:
        from steps.backup.basetar import (
            BaseBackupInvalid,
            check_tars,
            parse_server_manifest,
            tablespace_oids,
            tar_files,
        )
        from steps.pg.server import give_to_server
        from steps.pitr.errors import PitrError
        from steps.pitr.tablespaces import (
            TablespacePlan,
            backup_tablespace_oids,
            make_tablespace_dirs,
            plan_tablespaces,
            read_tablespace_facts,
            write_tablespace_map,
        )
        from steps.repository.layout import BACKUP_MANIFEST

        m = entry.manifest
        fetched = scratch / "fetch"
        self._fetch(copy, m, fetched)
        wal_dir = scratch / "wal"
        t0 = time.monotonic()
        self._fetch_wal(entry, copy, wal_dir)
        self.out.timings["fetch_s"] = round(self.out.timings.get("fetch_s", 0) + time.monotonic() - t0, 2)
        pgdata = server.datadir
        pgdata.mkdir(mode=0o700)
        t1 = time.monotonic()
        plan: list[TablespacePlan] = []
        try:
            smanifest = parse_server_manifest((fetched / BACKUP_MANIFEST).read_bytes())
            tars = tar_files(fetched)
            oids = sorted(tablespace_oids(tars), key=int)
            if oids != backup_tablespace_oids(m):
                raise BaseBackupInvalid(f"its tablespace tars ({oids}) are not those of its manifest "
                                        f"({backup_tablespace_oids(m)})")
            if oids:
                # Each tablespace into the scratch directory, never its production location.
                tsmap, _ = read_tablespace_facts(tars)
                try:
                    plan = plan_tablespaces(tsmap, oids, {}, scratch / "cluster" / "tablespaces", pgdata)
                except PitrError as e:
                    raise BackupBad("tablespaces", e.message) from None
                make_tablespace_dirs(plan)
            checked = check_tars(tars, smanifest, dest=pgdata, skip=lambda p: p.startswith("pg_wal/"),
                                 tablespace_dest={p.oid: p.directory for p in plan})
        except BaseBackupInvalid as e:
            if _no_space(e.message):
                raise ScratchFull(f"the scratch disk filled up while extracting the base backup: {e.message}") from None
            raise BackupBad("base backup files", e.message) from None
        shutil.rmtree(fetched, ignore_errors=True)  # extracted: its room goes to the replay
        self.out.checks.append(CheckResult("backup_manifest", "ok", f"{checked.files} files extracted, each "
                                           f"matching the server's backup_manifest ({checked.size / 1e6:.1f} MB)"
                                           + (f", {len(plan)} tablespace(s) among them" if plan else "")))
        self._prepare_recovery(pgdata, wal_dir, server, m.timeline)
        if plan:
            write_tablespace_map(pgdata, plan)
        give_to_server(scratch)
        self._replay(server, m)
        if plan:
            self._check_tablespaces(server, plan)
        self.out.timings["restore_s"] = round(time.monotonic() - t1, 2)
        self.out.restored_size_bytes = self._size(server, None)
        dbs = [self.db] if self.db else list(self.cfg.cluster.databases)
        self._checks(server, dbs, None)

    def _check_tablespaces(self, server: Any, plan: list[Any]) -> None:
        """Every tablespace of the backup, after the replay, in its scratch directory."""
        from steps.pg.server import as_server
        from steps.pg.tools import PG_BIN
        from steps.pitr.tablespaces import TABLESPACES_SQL, placed_tablespaces

        q = subprocess.run(as_server([os.path.join(PG_BIN, "psql"), "-h", str(server.socket_dir), "-p",
                                      str(server.port), "-U", self.superuser, "-d", "postgres", "-XAtq", "-c",
                                      TABLESPACES_SQL]), capture_output=True, text=True)
        if q.returncode != 0:
            raise CannotRun(f"the tablespaces of the restored copy cannot be listed: {q.stderr.strip()}")
        placed, problems, _warnings = placed_tablespaces(q.stdout, plan)
        if problems:
            raise BackupBad("tablespaces", "; ".join(problems))
        self.out.checks.append(CheckResult("tablespaces", "ok", "; ".join(
            f"{t['name']} (OID {t['oid']}, {t['original']} in production) restored in the scratch directory"
            for t in placed)))

    def _fetch_wal(self, entry: Any, copy: Any, dest: Path) -> None:
        """The archived WAL from the backup's start to its stop segment (and its timeline's history), each
        file checked by steps.wal.archive's reader; a gap or a damaged file fails the backup, naming the segment."""
        from steps.repository.layout import next_segment, wal_key
        from steps.wal.archive import fetch_blob
        from steps.wal.store import open_wal_stores

        m = entry.manifest
        cfg = self.cfg
        stores = [s for s in open_wal_stores(cfg.local.path if cfg.local else None,
                                             cfg.s3.model_dump(mode="json") if cfg.s3 else None)
                  if s.name == copy.store.name or self.source == "any"]
        dest.mkdir(mode=0o755)
        names = [m.start_wal]
        while names[-1] != m.stop_wal and len(names) < 1_000_000:
            names.append(next_segment(names[-1], m.wal_segment_size))
        sysid = int(entry.cluster)
        for name in names:
            data, problems = fetch_blob(stores, wal_key(entry.cluster, name), name, 2, sysid)
            if data is None:
                if problems:
                    raise BackupBad(f"WAL {name}", f"damaged in the archive: {'; '.join(problems)}")
                raise BackupBad(f"WAL {name}", f"the archive has a gap: {name} (needed from {m.start_wal} to "
                                f"{m.stop_wal}) is missing; the backup cannot become consistent")
            (dest / name).write_bytes(data)
        if m.timeline > 1:
            hist = f"{m.timeline:08X}.history"
            data, _ = fetch_blob(stores, wal_key(entry.cluster, hist), hist, 2, sysid)
            if data is not None:
                (dest / hist).write_bytes(data)
        for p in dest.iterdir():
            os.chmod(p, 0o644)
        self.out.checks.append(CheckResult("archived WAL", "ok", f"{len(names)} segments {m.start_wal} .. "
                                           f"{m.stop_wal}, each checked"))

    def _prepare_recovery(self, pgdata: Path, wal_dir: Path, server: Any, timeline: int) -> None:
        from steps.pitr.recovery import empty_pg_wal, write_auto_conf

        empty_pg_wal(pgdata)
        for name in ("postmaster.pid", "postmaster.opts", "standby.signal"):
            (pgdata / name).unlink(missing_ok=True)
        if not (pgdata / "postgresql.conf").exists():  # a Debian cluster keeps it under /etc
            (pgdata / "postgresql.conf").write_text("")
        # A throwaway copy: only this host's superuser, over its own socket.
        (pgdata / "pg_hba.conf").write_text("local all all trust\n")
        (pgdata / "pg_ident.conf").write_text("")
        server.socket_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "port": str(server.port), "listen_addresses": "", "unix_socket_directories": str(server.socket_dir),
            "archive_mode": "off", "shared_preload_libraries": "", "ssl": "off", "logging_collector": "off",
            "log_destination": "stderr", "hba_file": str(pgdata / "pg_hba.conf"),
            "ident_file": str(pgdata / "pg_ident.conf"), "external_pid_file": "", "fsync": "off",
            "hot_standby": "on",
        }
        recovery = {"restore_command": f"cp {wal_dir}/%f %p", "recovery_target": "immediate",
                    "recovery_target_action": "promote", "recovery_target_timeline": "current"}
        write_auto_conf(pgdata, recovery, settings)

    def _replay(self, server: Any, m: Any) -> None:
        from steps.pg.server import as_server
        from steps.pg.tools import PG_BIN
        from steps.pitr.recovery import fatal_lines, log_tail, postmaster_alive

        log = server.socket_dir / "recovery.log"
        log.touch()
        from steps.pg.server import give_to_server

        give_to_server(server.socket_dir)
        proc = subprocess.run(as_server([os.path.join(PG_BIN, "pg_ctl"), "-D", str(server.datadir), "-l", str(log),
                                         "-w", "-t", str(int(min(self.timeout_s, 3600))), "start"]),
                              capture_output=True, text=True)
        deadline = time.monotonic() + self.timeout_s
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            if _no_space(text):
                raise ScratchFull("the scratch disk filled up during the replay: "
                                  f"{_last_line(chr(10).join(ln for ln in text.splitlines() if NO_SPACE in ln))}")
            fatal = [ln for ln in fatal_lines(text) if "the database system is" not in ln]
            if fatal:
                raise BackupBad("replay to consistency", "\n".join(fatal[-4:]))
            if proc.returncode != 0 and not postmaster_alive(server.datadir):
                raise BackupBad("replay to consistency", f"the restored server did not start:\n{log_tail(log, 12)}")
            q = subprocess.run(as_server([os.path.join(PG_BIN, "psql"), "-h", str(server.socket_dir), "-p",
                                          str(server.port), "-U", self.superuser, "-d", "postgres", "-XAtq", "-c",
                                          "select pg_is_in_recovery()"]), capture_output=True, text=True)
            if q.returncode == 0 and q.stdout.strip() == "f":
                break
            if not postmaster_alive(server.datadir):
                raise BackupBad("replay to consistency", f"the restored server stopped:\n{log_tail(log, 12)}")
            if time.monotonic() > deadline:
                raise CannotRun(f"the replay did not end within {self.timeout_s:.0f} s")
            time.sleep(0.2)
        self.out.checks.append(CheckResult("replay to consistency", "ok",
                                           f"WAL {m.start_wal} .. {m.stop_wal} replayed, promoted"))

    # --- checks and facts -------------------------------------------------------------------------

    def _size(self, server: Any, db: str | None) -> int | None:
        from steps.pg.tools import Conn, connect

        try:
            with connect(Conn(str(server.socket_dir), server.port, self.superuser), "postgres", autocommit=True) as c:
                if db:
                    row = c.execute("select pg_database_size(%s)", (db,)).fetchone()
                else:
                    row = c.execute("select sum(pg_database_size(oid))::bigint from pg_database").fetchone()
                return int(row[0]) if row and row[0] is not None else None
        except Exception:  # noqa: BLE001 - a fact for the projection, not a check
            return None

    def _checks(self, server: Any, dbs: list[str], backup_dir: Path | None) -> None:
        from steps import verify_database

        t0 = time.monotonic()
        if not dbs:
            self.out.checks.append(CheckResult("databases", "ok", "no database named in cluster.databases: the "
                                               "cluster started and answered; nothing more to check"))
        for db in dbs:
            sink = _Collect()
            args = verify_database.Args(db=db, host=str(server.socket_dir), port=server.port, user=self.superuser,
                                        backup_dir=str(backup_dir) if backup_dir else None,
                                        config=str(self.config_path))
            with contextlib.redirect_stdout(self.log):
                verify_database.main(args, sink)  # type: ignore[arg-type]
            for c in sink.checks:
                status = "failed" if c.status == "failed" else "ok"
                name = c.name if len(dbs) == 1 else f"{db}: {c.name}"
                self.out.checks.append(CheckResult(name, status, c.detail))
        self.out.timings["checks_s"] = round(time.monotonic() - t0, 2)

    def _log_tail(self, n: int = 8) -> str:
        return "\n".join(self.log.getvalue().strip().splitlines()[-n:])

    def _record(self, entry: Any, copy: Any) -> None:
        from runbook import __version__
        from steps.repository import layout
        from steps.repository.manifest import Check, Tool, VerificationRecord, to_json

        now = datetime.now(UTC)
        record = VerificationRecord(
            backup_id=entry.backup_id, level="restored", passed=bool(self.out.passed), checked_at=now,
            repository=copy.store.name, manifest_sha256=copy.manifest_sha256,
            checks=[Check(name=c.name, status="ok" if c.status == "ok" else "failed", detail=c.detail)
                    for c in self.out.checks],
            tool=Tool(version=__version__), host=socket.gethostname(), kind=entry.kind,
            duration_s=round(sum(v for k, v in self.out.timings.items() if k != "total_s"), 2),
            timings=dict(self.out.timings), restored_size_bytes=self.out.restored_size_bytes,
        )
        key = layout.verification_key(copy.prefix, now)
        try:
            copy.store.put_bytes(key, to_json(record))
        except RunbookError as e:
            raise CannotRun(f"the verification {'passed' if self.out.passed else 'failed'} but its record could not "
                            f"be written to {copy.store.describe()}: {e.message}") from None
        self.out.record = key


def _kill_descendants() -> None:
    """SIGKILL every process descended from this one (read from /proc): after SIGTERM, what we started
    (initdb or pg_restore, possibly under runuser) stops writing into the scratch directory."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
