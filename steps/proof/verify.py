"""`runbook verify-backup`: prove a backup by restoring it, and record the proof beside it.

1. **Pick** a backup from the catalogue: `--backup ID`, or the newest (`--latest`, the default) of `--kind`
   (logical, the default, or base), in one repository (`--from`; default the first copy, local first). Only
   genuine backups (steps.repository.signing): a refused one named by `--backup` fails (exit 2, no record), newer
   ones passed over by `--latest` are warnings; `--allow-unsigned` accepts unsigned ones, and says so.
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
   host, the timings, the restored size), signed with this host's key (signing.private_key; without one it is
   written unsigned, with a warning, and readers ignore it); the manifest is never touched. A failed record demotes the
   backup: the catalogue does not pick it for a recovery until a later verification passes.

This module holds the lock and the run (`VerifyRun`: pick, scratch directory, record); each kind's test
restore is in steps.proof.verify_logical and steps.proof.verify_base, what they share (the outcome, the
errors, fetching, the database checks) in steps.proof.verification.

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
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from runbook.errors import Exit, LockHeld, RunbookError
from runbook.lockfile import LockFile
from steps.proof.verification import (
    EXIT_CANNOT_RUN,
    EXIT_FAILED,
    EXIT_LOCKED,
    EXIT_VERIFIED,
    BackupBad,
    CannotRun,
    CheckResult,
    Outcome,
    ScratchFull,
    Terminated,
)
from steps.proof.verify_logical import LogicalVerification
from steps.proof.verify_pgbackrest import PgBackRestVerification

# What runbook.cli.proof uses: the run, its outcome and its exit codes.
__all__ = ["EXIT_CANNOT_RUN", "EXIT_FAILED", "EXIT_VERIFIED", "Outcome", "VerifyRun"]


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


# --- the run --------------------------------------------------------------------------------------------


class VerifyRun(LogicalVerification, PgBackRestVerification):
    """One verify-backup: pick, fetch, restore, check, record (its options: `Verification`)."""

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
            self.out.exit_code = Exit.INTERRUPTED
        except LockHeld as e:
            self.out.error = str(e)
            self.out.exit_code = EXIT_LOCKED
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
        self.out.timings["total_s"] = round(time.monotonic() - t0, 2)
        return self.out

    def _run(self) -> None:
        from steps.engines.pgbackrest.info import LABEL

        if getattr(self.cfg, "engine", "own") == "pgbackrest" and (
                self.kind == "base" or (self.backup_id is not None and LABEL.match(self.backup_id))):
            self._run_pgbackrest()  # steps.proof.verify_pgbackrest: pgBackRest's backups, the product's record
            return
        from steps.repository.catalogue import scan, trust_notes, usable_copies
        from steps.repository.configured import open_stores
        from steps.repository.manifest import Level
        from steps.repository.signing import trust_from_config

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
        try:
            trust = trust_from_config(self.cfg, allow_unsigned=self.allow_unsigned)
        except RunbookError as e:
            self.out.error = str(e)
            return
        cat = scan(stores, trust=trust, db=self.db, kinds=kinds)  # type: ignore[arg-type]
        for name, err in cat.errors.items():
            problems.append(f"{name}: {err}")
        entries = [e for e in cat.entries + cat.base if self.db is None or e.kind == "base" or e.db == self.db]
        if self.backup_id:
            entries = [e for e in entries if e.backup_id == self.backup_id]
            entries = [e for e in entries if e.kind == self.kind] or entries
        else:
            entries = [e for e in entries if e.kind == self.kind]
        refused = [r for r in cat.refused if r.backup_id == self.backup_id]
        if not entries and refused:
            self.out.backup_id, self.out.kind, self.out.db = refused[0].backup_id, refused[0].kind, refused[0].db or None
            self.out.passed, self.out.exit_code = False, EXIT_FAILED
            self.out.error = "; ".join(f"{r.describe()} is not genuine: {r.reason}" for r in refused) + \
                ": refused, nothing restored (no record is written into a backup that is not genuine)"
            return
        if not entries:
            what = f"backup {self.backup_id}" if self.backup_id else f"{self.kind} backup" + \
                (f" of {self.db}" if self.db else "")
            self.out.error = f"no {what} in {', '.join(s.describe() for s in stores)}" + \
                (f" (unreadable: {'; '.join(problems)})" if problems else "")
            return
        entry = entries[0]  # newest first
        copies = [entry.copies[n] for n in entry.locations() if self.source in ("any", n)]
        copy = copies[0]
        for _name, _status, detail in trust_notes(cat, entry.kind, db=entry.db or None, picked=entry,
                                                  source=copy.store.name):
            self.out.warnings.append(detail)
        self.out.backup_id, self.out.kind, self.out.cluster = entry.backup_id, entry.kind, entry.cluster
        self.out.db = entry.db or None
        self.out.repository = copy.store.name
        usable = bool(usable_copies(entry, Level.readable, copy.store.name))
        self.say(f"verifying {entry.kind} backup {entry.backup_id}" + (f" of {entry.db}" if entry.db else "")
                 + f" (cluster {entry.cluster}, {entry.size_bytes / 1e6:.1f} MB, level {copy.level.name}"
                 + ("" if usable else ", not picked by a recovery now") + f") from {copy.store.describe()}")

        def restore(scratch: Path, server: Any) -> None:
            try:
                if entry.kind == "logical":
                    self._verify_logical(entry, copy, scratch, server)
                else:
                    self._verify_base(entry, copy, scratch, server)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise ScratchFull(f"the scratch disk filled up during the test restore ({scratch}): "
                                      f"{e.strerror}") from None
                raise CannotRun(f"the test restore could not run: {e}") from None

        self._test_restore(restore, lambda: self._record(entry, copy))

    def _test_restore(self, restore: Callable[[Path, Any], None], record: Callable[[], None]) -> None:
        """The test restore in a fresh scratch directory, whatever the kind of backup: `restore(scratch,
        server)` restores and checks (a BackupBad is a failed check); then the scratch cluster is stopped and
        `record()` writes the verification record, which decides the exit code. A full scratch disk judges
        nothing (no record); another RunbookError is the run's error, its exit code kept when it is a failure.
        The scratch directory is removed whatever happened."""
        from steps.pg.server import Server

        scratch = self._make_scratch()
        self.out.scratch = str(scratch)
        server = Server(scratch / "cluster" / "data", scratch / "cluster" / "run")
        recorded = False
        try:
            try:
                restore(scratch, server)
                self.out.passed = all(c.status != "failed" for c in self.out.checks)
            except BackupBad as e:
                self.out.checks.append(CheckResult(e.check, "failed", e.detail))
                self.out.passed = False
            self._stop(server)
            record()
            recorded = True
        except ScratchFull as e:
            self.out.error = f"{e.message}; the backup was not judged (no record written)"
            self.out.exit_code = EXIT_FAILED
        except RunbookError as e:
            self.out.error = str(e)
            self.out.exit_code = EXIT_FAILED if e.exit_code == EXIT_FAILED else EXIT_CANNOT_RUN
        finally:
            self._cleanup(server, scratch)
        if recorded:
            self.out.exit_code = EXIT_VERIFIED if self.out.passed else EXIT_FAILED

    def _cleanup(self, server: Any, scratch: Path) -> None:
        """The scratch cluster stopped and its directory removed, whatever happened; its time recorded."""
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

    def _make_scratch(self) -> Path:
        """A fresh scratch directory made by steps.fs.private_dir under the scratch root (which must be a real
        directory owned by root or by us; made 0755 when missing, so that the server's user can traverse it).

        Inside it: `fetch/` (0700, ours: the fetched backup, with globals.sql's password hashes and the user
        mappings' passwords) and `cluster/` (0700: the scratch cluster's data, tablespaces, WAL and socket,
        given to the server's user once its files are in place). The scratch directory itself is 0711: the
        server's user must pass through it to reach `cluster/`, but may not list it, and everything else in it
        is 0700 and ours, so `cluster/` is the only thing that user can read."""
        from steps.fs import UnsafePath, make_real_dir, open_real_dir, private_dir, set_owner_mode

        try:
            if not os.path.lexists(self.scratch_root):
                os.makedirs(self.scratch_root, mode=0o755)
            scratch = private_dir(self.scratch_root, "runbook-verify-")
            fd = open_real_dir(scratch, "scratch directory")
            try:
                set_owner_mode(fd, mode=0o711)
            finally:
                os.close(fd)
            make_real_dir(scratch / "fetch", mode=0o700, what="scratch fetch directory")
            make_real_dir(scratch / "cluster", mode=0o700, what="scratch cluster directory")
        except UnsafePath as e:
            raise CannotRun(f"cannot make a scratch directory under {self.scratch_root}: {e.message}",
                            hint="pass --scratch-dir DIR (or $RUNBOOK_SCRATCH_DIR): a directory owned by root, "
                                 "with room for the restore") from None
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
            wal_replayed_bytes=self.out.wal_replayed_bytes, wal_replay_s=self.out.wal_replay_s,
        )
        key = layout.verification_key(copy.prefix, now)
        from steps.repository.signing import signer_from_config

        try:
            signer = signer_from_config(self.cfg, required=False)
            why = "no signing.private_key on this host"
        except RunbookError as e:
            signer, why = None, e.message
        try:
            if signer is not None:
                signer.put(copy.store, key, to_json(record))
            else:
                copy.store.put_bytes(key, to_json(record))
                self.out.warnings.append(f"the record is written unsigned ({why}): readers ignore it unless "
                                         "--allow-unsigned")
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


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
