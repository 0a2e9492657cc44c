"""`runbook basebackup` with engine: pgbackrest: `pgbackrest backup --type=full|diff|incr`, then what it made as
`pgbackrest info` lists it, recorded in the status file monitoring reads (`<state_dir>/basebackup-status.json`,
the same shape as the own engine's, with `engine: pgbackrest`); the command line prints the outcome
(runbook/cli/backup.py).

pgBackRest holds its own lock (a second backup of the stanza fails with its "unable to acquire lock"), checks that
the WAL from the backup's start to its stop reached the archive before it ends, and expires old backups by its own
retention (repo1-retention-full): the product keeps no copy and writes nothing into its repository.
Exit codes: 0 done, 2 pgBackRest failed (nothing new published), 3 could not run (the config, the executable).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook import __version__
from runbook.errors import Exit, RunbookError
from steps.backup.logical import STATUS, write_status_file
from steps.engines.facts import BaseBackupDone
from steps.engines.pgbackrest.engine import KINDS, PgBackRestEngine
from steps.engines.pgbackrest.runner import PgBackRestError


@dataclass
class Outcome:
    exit_code: int
    done: BaseBackupDone | None = None
    error: str | None = None  # what went wrong, with pgBackRest's own ERROR line
    hint: str | None = None
    status_file: Path | None = None

    @property
    def cannot_run(self) -> bool:
        return self.exit_code == Exit.CANNOT_RUN


def run_basebackup(cfg: Any, config_path: Path, kind: str | None) -> Outcome:
    started = datetime.now(UTC)
    status: dict[str, Any] = {"format_version": 1, "tool": {"name": "runbook", "version": __version__},
                              "host": socket.gethostname(), "config": str(config_path), "kind": "base",
                              "engine": "pgbackrest", "type": kind, "backup_id": None,
                              "started_at": started.isoformat()}
    status_file = cfg.state_dir() / "basebackup-status.json"

    def finish(out: Outcome, **more: Any) -> Outcome:
        status.update(finished_at=datetime.now(UTC).isoformat(), exit_code=out.exit_code,
                      status=STATUS[out.exit_code], error=out.error, hint=out.hint, **more)
        write_status_file(status_file, status, str(status_file))
        out.status_file = status_file
        return out

    if kind is not None and kind not in KINDS:
        return finish(Outcome(Exit.CANNOT_RUN, error=f"--type {kind} is not one of {', '.join(KINDS)}"))
    t0 = time.monotonic()
    try:
        done = PgBackRestEngine(cfg).basebackup(kind)
    except PgBackRestError as e:
        # a command that could not start (no executable, an option pgBackRest refuses) vs a backup that failed
        cannot = (e.code is None and e.message.startswith("cannot run pgbackrest")) or e.code == 31
        return finish(Outcome(Exit.CANNOT_RUN if cannot else Exit.FAILED, error=e.message, hint=e.hint),
                      duration_s=round(time.monotonic() - t0, 3))
    except RunbookError as e:
        return finish(Outcome(Exit.CANNOT_RUN, error=e.message, hint=e.hint))
    b = done.backup
    return finish(Outcome(Exit.OK, done=done), backup_id=b.label, duration_s=round(done.duration_s, 3),
                  backup={"label": b.label, "type": b.kind, "reference": list(b.reference),
                          "started_at": b.started_at.isoformat(), "stopped_at": b.stopped_at.isoformat(),
                          "start_wal": b.start_wal, "stop_wal": b.stop_wal, "start_lsn": b.start_lsn,
                          "stop_lsn": b.stop_lsn, "size_bytes": b.size_bytes, "stored_bytes": b.stored_bytes})
