"""`runbook basebackup` with engine: pgbackrest: `pgbackrest backup --type=full|diff|incr`, then what it made as
`pgbackrest info` lists it, said in the product's words and recorded in the status file monitoring reads
(`<state_dir>/basebackup-status.json`, the same shape as the own engine's, with `engine: pgbackrest`).

pgBackRest holds its own lock (a second backup of the stanza fails with its "unable to acquire lock"), checks that
the WAL from the backup's start to its stop reached the archive before it ends, and expires old backups by its own
retention (repo1-retention-full): the product keeps no copy and writes nothing into its repository.
Exit codes: 0 done, 2 pgBackRest failed (nothing new published), 3 could not run (the config, the executable).
"""

from __future__ import annotations

import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook import __version__
from runbook.errors import Exit, RunbookError
from steps.backup.logical import STATUS, write_status_file
from steps.engines.pgbackrest.engine import KINDS, PgBackRestEngine
from steps.engines.pgbackrest.runner import PgBackRestError


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def run_basebackup(cfg: Any, config_path: Path, kind: str | None, *, console: bool = True) -> int:
    started = datetime.now(UTC)
    status: dict[str, Any] = {"format_version": 1, "tool": {"name": "runbook", "version": __version__},
                              "host": socket.gethostname(), "config": str(config_path), "kind": "base",
                              "engine": "pgbackrest", "type": kind, "backup_id": None,
                              "started_at": started.isoformat()}
    status_file = cfg.state_dir() / "basebackup-status.json"

    def finish(code: int, **more: Any) -> int:
        status.update(finished_at=datetime.now(UTC).isoformat(), exit_code=code, status=STATUS[code], **more)
        write_status_file(status_file, status, str(status_file))
        return code

    if kind is not None and kind not in KINDS:
        print(f"runbook: basebackup could not run: --type {kind} is not one of {', '.join(KINDS)}", file=sys.stderr)
        return finish(Exit.CANNOT_RUN, error=f"bad --type {kind}")
    t0 = time.monotonic()
    try:
        engine = PgBackRestEngine(cfg)
        stanza = engine.settings.stanza
        if console:
            print(f"basebackup: pgbackrest backup of stanza {stanza}"
                  + (f" --type={kind}" if kind else " (its default type)"))
        done = engine.basebackup(kind)
    except PgBackRestError as e:
        # a command that could not start (no executable, a config pgBackRest refuses) vs a backup that failed
        cannot = e.code is None and "cannot run pgbackrest" in e.message or e.code == 31
        print(f"runbook: basebackup {'could not run' if cannot else 'failed (nothing new published)'}: {e}",
              file=sys.stderr)
        return finish(Exit.CANNOT_RUN if cannot else Exit.FAILED, error=e.message, hint=e.hint,
                      duration_s=round(time.monotonic() - t0, 3))
    except RunbookError as e:
        print(f"runbook: basebackup could not run: {e}", file=sys.stderr)
        return finish(Exit.CANNOT_RUN, error=e.message)
    b = done.backup
    ref = f", on {b.reference[-1]}" if b.reference else ""
    print(f"base {b.label}: ok, {b.kind}{ref}, {_mb(b.size_bytes)} ({_mb(b.stored_bytes)} stored), readable in "
          f"pgbackrest (pgbackrest backup {done.duration_s:.1f} s), WAL {b.start_wal} .. {b.stop_wal}")
    return finish(Exit.OK, backup_id=b.label, duration_s=round(done.duration_s, 3),
                  backup={"label": b.label, "type": b.kind, "reference": list(b.reference),
                          "started_at": b.started_at.isoformat(), "stopped_at": b.stopped_at.isoformat(),
                          "start_wal": b.start_wal, "stop_wal": b.stop_wal, "start_lsn": b.start_lsn,
                          "stop_lsn": b.stop_lsn, "size_bytes": b.size_bytes, "stored_bytes": b.stored_bytes})
