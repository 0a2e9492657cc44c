"""What every verify-backup run shares, whatever the kind of backup: the outcome (exit codes, checks,
timings), the exceptions that decide it, the sink that collects a reused action's events, and the base class
`Verification`: the run's options and state, and the steps each kind uses (fetching with every object's
sha256 checked, the database checks, the restored size).

The kinds' own steps are in steps.proof.verify_logical and steps.proof.verify_base; the run itself (the
lock, the scratch cluster, the record) in steps.proof.verify.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.errors import Exit, RunbookError

EXIT_VERIFIED = Exit.OK
EXIT_FAILED = Exit.FAILED
EXIT_CANNOT_RUN = Exit.CANNOT_RUN
EXIT_LOCKED = Exit.LOCKED
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
    wal_replayed_bytes: int | None = None
    wal_replay_s: float | None = None
    record: str | None = None
    error: str | None = None
    scratch: str | None = None
    scratch_removed: bool | None = None
    warnings: list[str] = field(default_factory=list)  # not genuine backups passed over; unsigned ones accepted

    def as_json(self) -> dict[str, Any]:
        status = {int(EXIT_VERIFIED): "verified", int(EXIT_FAILED): "failed"}.get(self.exit_code, "could not run")
        return {"status": status, "exit_code": self.exit_code, "backup_id": self.backup_id, "kind": self.kind,
                "db": self.db, "cluster": self.cluster, "repository": self.repository, "passed": self.passed,
                "checks": [c.__dict__ for c in self.checks], "timings": self.timings,
                "restored_size_bytes": self.restored_size_bytes, "wal_replayed_bytes": self.wal_replayed_bytes,
                "wal_replay_s": self.wal_replay_s, "record": self.record, "error": self.error,
                "scratch": self.scratch, "scratch_removed": self.scratch_removed,
                "warnings": self.warnings}


# --- events from the reused actions ---------------------------------------------------------------------


class Collect:
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


def no_space(text: str) -> bool:
    return NO_SPACE in text or "could not extend file" in text or "could not write to file" in text


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


# --- the steps every kind shares ------------------------------------------------------------------------


class Verification:
    """A verify-backup run's options and state, and the steps both kinds use."""

    def __init__(self, cfg: Any, config_path: Path, *, backup_id: str | None = None, kind: str = "logical",
                 db: str | None = None, source: str = "any", scratch_root: Path | None = None,
                 lock_wait: float = 60.0, jobs: int = 2, superuser: str = "postgres",
                 timeout_s: float = 4 * 3600, say: Callable[[str], None] | None = None,
                 allow_unsigned: bool = False) -> None:
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
        self.say = say or (lambda text: None)  # progress for a person: the command line passes its printer
        self.allow_unsigned = allow_unsigned
        self.out = Outcome()
        self.log = io.StringIO()  # what the reused actions printed: its tail goes into failures

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
        # This copy's own manifest: each repository records its own stored bytes (encrypted or not).
        manifest = type(manifest).model_validate(json.loads(data))
        if in_place and isinstance(copy.store, LocalStore) and manifest.encryption is None:
            self._check_in_place(copy, manifest)
            self.out.timings["fetch_s"] = round(time.monotonic() - t0, 2)
            return copy.store.root / copy.prefix
        opener = self._opener(copy, manifest)
        dest.mkdir(parents=True, exist_ok=True)
        for o in manifest.objects:
            try:
                copy.store.fetch_file(copy.prefix + manifest.stored_key(o), dest / o.path, size=o.size,
                                      sha256=o.sha256, decoding=opener.decoding(o) if opener is not None else None)
            except CorruptObject:
                raise BackupBad(f"sha256 of {o.path}", f"{copy.prefix}{o.path} does not match the manifest "
                                f"(expected sha256 {o.sha256}, {o.size} bytes): altered after the backup") from None
            except NotFound:
                raise BackupBad(f"object {o.path}", f"{copy.prefix}{o.path} is missing from "
                                f"{copy.store.describe()}") from None
            except RunbookError as e:
                if opener is not None and opener.owns(e):  # the object's ciphertext, not the network
                    raise BackupBad(f"ciphertext of {o.path}", e.message) from None
                raise
        (dest / layout.MANIFEST).write_bytes(data)
        self.out.checks.append(CheckResult("sha256 of every object", "ok",
                                           f"{len(manifest.objects)} objects, {manifest.size_bytes / 1e6:.1f} MB"))
        if manifest.encryption is not None:
            self.out.checks.append(CheckResult(
                "decryption", "ok", f"every object decrypted with this host's identity (age, epoch "
                f"{manifest.encryption.epoch}): stored and plaintext sha256 as the manifest says"))
        self.out.timings["fetch_s"] = round(time.monotonic() - t0, 2)
        return dest

    def _opener(self, copy: Any, manifest: Any) -> Any:
        """An encrypted copy's key (steps.encrypted.reading), before anything is fetched: a host without one
        cannot judge the backup (CannotRun: no record); a forged epoch is the backup's fault (BackupBad)."""
        if manifest.encryption is None:
            return None
        from steps.crypto.errors import EpochRefused, NoIdentity
        from steps.encrypted.reading import Keys
        from steps.repository.signing import trust_from_config

        keys = Keys(self.cfg, trust_from_config(self.cfg, allow_unsigned=self.allow_unsigned),
                    allow_unsigned=self.allow_unsigned, config_path=self.config_path)
        try:
            return keys.opener(copy.store, manifest, f"backup {copy.prefix.rstrip('/').rsplit('/', 1)[-1]} in "
                               f"{copy.store.describe()}")
        except NoIdentity as e:
            raise CannotRun(e.message, hint=e.hint) from None
        except EpochRefused as e:
            raise BackupBad("key epoch", e.message) from None

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
            sink = Collect()
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
