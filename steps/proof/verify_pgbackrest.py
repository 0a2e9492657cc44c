"""verify-backup of a base backup with `engine: pgbackrest`: pgBackRest's own `verify`, then a test restore
through `pgbackrest restore` into a fresh scratch directory, replayed to consistency, checked, and recorded.

1. **Pick**: `--backup LABEL`, or the newest backup `pgbackrest info` lists for the stanza.
2. **`pgbackrest verify`** (the whole stanza: pgBackRest 2.45 verifies every backup and the archive): a backup
   it finds invalid fails here, naming the files it names (`invalid checksum '<label>/pg_data/...'`) and what
   it counted; the test restore is not attempted. Problems it finds elsewhere in the archive are warnings.
3. **Restore** into `<scratch>/cluster/data` (the scratch directory made as for the own engine:
   steps.proof.verify), `--type=immediate --target-action=promote --archive-mode=off`, tablespaces under
   `<scratch>/cluster/tablespaces`; the copy's settings (its own socket and port, a pg_hba that lets only this
   host's superuser in over that socket, fsync off) go in as `--recovery-option`, so root writes nothing into
   what pgBackRest's user restored. pgBackRest checks every file against its manifest as it restores; a damaged
   file fails the backup with pgBackRest's message.
4. **Replay** to consistency (steps.proof.verify_base: `pg_is_in_recovery()` until false, FATAL/PANIC in the
   log fail it, the server's own redo timing recorded), then the same **checks** as the own engine
   (steps.verify_database: expected tables, smoke queries) and the restored size.
5. **Record**: the same VerificationRecord, signed, in the product's own repository under
   steps.engines.pgbackrest.records' prefix (never inside pgBackRest's repository), vouching for the backup's
   fingerprint (records.fingerprint), with pgBackRest verify's result among its checks.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from runbook.errors import RunbookError
from steps.proof.verification import (
    BackupBad,
    CannotRun,
    CheckResult,
)
from steps.proof.verify_base import BaseVerification

_BACKUP_LINE = re.compile(r"^\s*backup: (\S+), status: (\S+?)(?:,|$)(.*)$")
_FILE_LINE = re.compile(r"\b(invalid checksum|invalid size|file missing|missing|invalid) '([^']{1,300})'")
_COUNTS = re.compile(r"missing: (\d+), checksum invalid: (\d+), size invalid: (\d+), other: (\d+)")
_ARCHIVE_LINE = re.compile(r"^\s*archiveId: (\S+), total WAL checked: (\d+), total valid WAL: (\d+)")
# pgBackRest's errors that mean the backup's files are bad (FormatError, ChecksumError, FileMissingError,
# FileReadError on a repository file, ...), as opposed to this host's trouble (a lock, a permission, a timeout).
_BAD_WORDS = ("checksum", "data error", "format", "invalid", "does not exist", "missing", "corrupt", "unexpected eof")


def parse_verify(text: str, label: str) -> tuple[str | None, list[str], str, list[str]]:
    """pgBackRest verify's text (`--output=text --verbose` plus its info log lines): (the status of backup
    `label` or None when not listed, the files it names for `label`, its counts line for `label`, archive
    problems as lines)."""
    status = None
    counts = ""
    files: list[str] = []
    archive: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := _FILE_LINE.search(line):
            what, path = m.group(1), m.group(2)
            if path.startswith(label + "/"):
                files.append(f"{what} {path}")
            elif re.match(r"^\d+-\d+/", path):  # the archive: <archive id>/<timeline+log>/<file>
                archive.append(f"{what} {path}")
        if m := _BACKUP_LINE.match(line):
            if m.group(1) == label:
                status = m.group(2)
                nxt = lines[i + 1] if i + 1 < len(lines) else ""
                counts = m.group(3).strip(" ,") + ("; " + nxt.strip() if _COUNTS.search(nxt) else "")
        elif m := _ARCHIVE_LINE.match(line):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            c = _COUNTS.search(nxt)
            if c and any(int(x) for x in c.groups()):
                archive.append(f"archive {m.group(1)}: {nxt.strip()}")
    return status, sorted(set(files)), counts, archive


class PgBackRestVerification(BaseVerification):
    """verify-backup --kind base when the repository config says `engine: pgbackrest`."""

    def _run_pgbackrest(self) -> None:
        from steps.engines.pgbackrest.records import fingerprint
        from steps.engines.pgbackrest.restore import stanza_facts
        from steps.engines.pgbackrest.runner import PgBackRestError
        from steps.engines.pgbackrest.settings import settings_from

        try:
            s = settings_from(self.cfg)
            st = stanza_facts(s)
        except RunbookError as e:
            self.out.error = str(e)
            return
        if self.backup_id:
            b = next((x for x in st.backups if x.label == self.backup_id), None)
        else:
            b = st.backups[0] if st.backups else None
        if b is None:
            self.out.error = (f"no pgBackRest backup {self.backup_id} in stanza {s.stanza}" if self.backup_id else
                              f"no pgBackRest backup in stanza {s.stanza}: take one with `runbook basebackup`")
            return
        self.out.backup_id, self.out.kind, self.out.cluster = b.label, "base", b.system_identifier
        store = self._record_store()
        self.out.repository = store.name
        self.say(f"verifying pgBackRest {b.kind} backup {b.label} of stanza {s.stanza} (cluster "
                 f"{b.system_identifier}, {b.size_bytes / 1e6:.1f} MB, ended {b.stopped_at:%Y-%m-%d %H:%M:%S} UTC)")

        def restore(scratch: Path, server: Any) -> None:
            try:
                self._pgbackrest_verify(s, b.label)
                self._pgbackrest_restore(s, b, scratch, server)
            except PgBackRestError as e:
                raise CannotRun(e.message, hint=e.hint) from None

        self._test_restore(restore, lambda: self._record_pgbackrest(store, s.stanza, b, fingerprint(s.stanza, b)))

    def _test_restore(self, restore: Callable[[Path, Any], None], record: Callable[[], None]) -> None:
        raise NotImplementedError  # VerifyRun's (the scratch, its cluster, the record, the exit code)

    def _record_store(self) -> Any:
        """The product's own repository that keeps the record: the local one first (or `--from`)."""
        from steps.repository.configured import open_stores

        which = self.source if self.source in ("local", "s3") else "all"
        try:
            return open_stores(self.cfg, which)[0]  # type: ignore[arg-type]
        except RunbookError as e:
            raise CannotRun(f"no repository of the product's own to keep the verification record in: {e.message}",
                            hint="add local: {path: ...} (or s3:) to the repository config: the product's records "
                                 "are kept there, never inside pgBackRest's repository") from None

    def _pgbackrest_verify(self, s: Any, label: str) -> None:
        """`pgbackrest verify` of the stanza; backup `label` must be valid."""
        from steps.engines.pgbackrest.runner import run

        t0 = time.monotonic()
        proc = run(s, "verify", "--output=text", "--verbose", "--log-level-console=info", timeout=self.timeout_s)
        self.out.timings["verify_s"] = round(time.monotonic() - t0, 2)
        status, files, counts, archive = parse_verify(proc.stdout + "\n" + proc.stderr, label)
        for problem in archive[:20]:
            self.out.warnings.append(f"pgbackrest verify: {problem}")
        if status is None:
            raise BackupBad("pgbackrest verify", f"pgBackRest's verify does not list backup {label}")
        if status != "valid":
            named = "; ".join(files[:10]) + (f" (and {len(files) - 10} more)" if len(files) > 10 else "")
            raise BackupBad("pgbackrest verify", f"backup {label}: {status}" + (f": {named}" if named else "")
                            + (f" ({counts})" if counts else ""))
        self.out.checks.append(CheckResult("pgbackrest verify", "ok", f"backup {label} valid ({counts})"
                                           + (f"; {len(archive)} archive problem(s) elsewhere, as warnings"
                                              if archive else "")))

    def _pgbackrest_restore(self, s: Any, b: Any, scratch: Path, server: Any) -> None:
        from steps.engines.pgbackrest.restore import make_target_dir, restore, run_user
        from steps.engines.pgbackrest.runner import PgBackRestError

        cluster = scratch / "cluster"
        pw = run_user(s)
        # The server's own files beside the data directory, root's and read-only: pg_hba lets only the
        # superuser in over the scratch socket, whatever production's pg_hba.conf says.
        hba, ident = cluster / "pg_hba.conf", cluster / "pg_ident.conf"
        hba.write_text("local all all trust\n")
        ident.write_text("")
        os.chmod(hba, 0o644)
        os.chmod(ident, 0o644)
        make_target_dir(cluster, pw, "scratch cluster directory")  # pgBackRest's user makes data/ in it
        server.socket_dir.mkdir(mode=0o700)
        settings = {
            "port": str(server.port), "listen_addresses": "", "unix_socket_directories": str(server.socket_dir),
            "shared_preload_libraries": "", "ssl": "off", "logging_collector": "off", "log_destination": "stderr",
            "hba_file": str(hba), "ident_file": str(ident), "external_pid_file": "", "fsync": "off",
            "hot_standby": "on",
        }
        extra = ["--type=immediate", "--target-action=promote", "--archive-mode=off",
                 f"--tablespace-map-all={cluster / 'tablespaces'}",
                 *[f"--recovery-option={k}={v}" for k, v in settings.items()]]
        t1 = time.monotonic()
        try:
            restore_s = restore(s, b, server.datadir, extra, delta=False, timeout=self.timeout_s)
        except PgBackRestError as e:
            if any(w in e.message.lower() for w in _BAD_WORDS):
                raise BackupBad("pgbackrest restore", e.message) from None
            raise CannotRun(e.message, hint=e.hint) from None
        self.out.timings["fetch_s"] = round(restore_s, 2)  # fetching and restoring are one step here
        self.out.checks.append(CheckResult("pgbackrest restore", "ok", f"backup {b.label} restored "
                                           f"({restore_s:.1f} s), every file checked by pgBackRest against its "
                                           "manifest"))
        from steps.pg.server import give_to_server

        give_to_server(server.socket_dir)
        self._replay(server, SimpleNamespace(start_wal=b.start_wal, stop_wal=b.stop_wal))
        self.out.timings["restore_s"] = round(time.monotonic() - t1, 2)
        self.out.restored_size_bytes = self._size(server, None)
        dbs = [self.db] if self.db else list(self.cfg.cluster.databases)
        self._checks(server, dbs, None)

    def _record_pgbackrest(self, store: Any, stanza: str, b: Any, entry_sha256: str) -> None:
        """The verification record, signed, under the product's prefix for this pgBackRest backup."""
        from runbook import __version__
        from steps.engines.pgbackrest.records import records_prefix
        from steps.repository.layout import verification_key
        from steps.repository.manifest import Check, Tool, VerificationRecord, to_json
        from steps.repository.signing import signer_from_config

        now = datetime.now(UTC)
        record = VerificationRecord(
            backup_id=b.label, level="restored", passed=bool(self.out.passed), checked_at=now,
            repository=store.name, manifest_sha256=entry_sha256,
            checks=[Check(name=c.name, status="ok" if c.status == "ok" else "failed", detail=c.detail)
                    for c in self.out.checks],
            tool=Tool(version=__version__), host=socket.gethostname(), kind="base",
            duration_s=round(sum(v for k, v in self.out.timings.items() if k != "total_s"), 2),
            timings=dict(self.out.timings), restored_size_bytes=self.out.restored_size_bytes,
            wal_replayed_bytes=self.out.wal_replayed_bytes, wal_replay_s=self.out.wal_replay_s,
        )
        key = verification_key(records_prefix(str(b.system_identifier), stanza, b.label), now)
        try:
            signer = signer_from_config(self.cfg, required=False)
            why = "no signing.private_key on this host"
        except RunbookError as e:
            signer, why = None, e.message
        data = to_json(record)
        try:
            if signer is not None:
                signer.put(store, key, data)
            else:
                store.put_bytes(key, data)
                self.out.warnings.append(f"the record is written unsigned ({why}): readers ignore it unless "
                                         "--allow-unsigned")
        except RunbookError as e:
            raise CannotRun(f"the verification {'passed' if self.out.passed else 'failed'} but its record could not "
                            f"be written to {store.describe()}: {e.message}") from None
        self.out.record = key

