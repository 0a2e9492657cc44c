"""verify-backup of a logical backup: the scratch cluster made (initdb, start) while the backup is fetched
(or checked in place in a local repository), then restored with restore-logical's machinery and checked
with verify-database's, row counts against the manifest's."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from steps.proof.verification import (
    BackupBad,
    CannotRun,
    CheckResult,
    Collect,
    ScratchFull,
    Verification,
    last_line,
    no_space,
)


class LogicalVerification(Verification):
    """The steps of a logical backup's test restore."""

    def _start_scratch(self, server: Any) -> None:
        try:
            server.initdb()
            server.start("fsync=off", "full_page_writes=off", "synchronous_commit=off", "wal_level=minimal",
                         "max_wal_senders=0", "autovacuum=off", "archive_mode=off", "max_wal_size=4GB")
        except RunbookError as e:
            if no_space(str(e)):
                raise ScratchFull(f"the scratch disk filled up while making the scratch cluster: {e.message}") from None
            raise CannotRun(f"cannot run a scratch cluster on this host: {e.message}",
                            hint="verify-backup needs the PostgreSQL 15 server (postgresql-15)") from None

    def _verify_logical(self, entry: Any, copy: Any, scratch: Path, server: Any) -> None:
        import threading

        from steps import restore_logical

        m = entry.manifest
        # Only root (or whoever verifies) reads the fetched files: globals.sql carries password hashes,
        # user_mappings.sql remote passwords. scratch/fetch is made 0700 and ours with the scratch directory
        # (Verification.run); the objects land in it 0600 (Store.fetch_file). The scratch cluster's own
        # directory is the only one the server's user gets.
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
        sink = Collect()
        args = restore_logical.Args(backup_dir=str(fetched), db=m.database.name, jobs=self.jobs,
                                    host=str(server.socket_dir), port=server.port, user=self.superuser,
                                    analyze=False, verify=False)
        with contextlib.redirect_stdout(self.log):
            code = restore_logical.main(args, sink)  # type: ignore[arg-type]
        self.out.timings["restore_s"] = round(time.monotonic() - t1, 2)
        if code != 0:
            failed = [c for c in sink.checks if c.status == "failed"]
            detail = failed[-1].detail if failed else self._log_tail()
            if no_space(detail) or no_space(self.log.getvalue()[-4000:]):
                raise ScratchFull(f"the scratch disk filled up during the test restore: {last_line(detail)}")
            raise BackupBad(failed[-1].name if failed else "restore", detail)
        self.out.checks.append(CheckResult("pg_restore", "ok", f"{m.database.name} restored in "
                                           f"{self.out.timings['restore_s']:.1f} s"))
        self.out.restored_size_bytes = self._size(server, m.database.name)
        self._checks(server, [m.database.name], fetched)
