"""wait-postgres: poll `pg_isready` until the server accepts connections or the deadline passes.

The first check of the provisioning step: is the target server up at all, and which major version?
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from pydantic import BaseModel, ConfigDict, Field

from steps.events import Events

PG_BIN = "/usr/lib/postgresql/15/bin"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str | None = Field(None, description="Host or socket directory (default: PGHOST)")
    port: int | None = Field(None, description="Port (default: PGPORT)")
    dbname: str = "postgres"
    deadline_s: float = Field(60, ge=0, description="Give up after this many seconds")
    interval_s: float = Field(1, gt=0)


def _tool(name: str) -> str:
    path = os.path.join(PG_BIN, name)
    return path if os.access(path, os.X_OK) else (shutil.which(name) or name)


def main(args: Args, events: Events) -> int:
    cmd = [_tool("pg_isready"), "-d", args.dbname]
    if args.host:
        cmd += ["-h", args.host]
    if args.port:
        cmd += ["-p", str(args.port)]
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        proc = subprocess.run(cmd, capture_output=True, text=True)
        msg = (proc.stdout + proc.stderr).strip()
        print(f"attempt {attempt}: {msg}", flush=True)
        waited = time.monotonic() - start
        events.progress(min(waited, args.deadline_s), args.deadline_s, "s", "waiting for the server")
        if proc.returncode == 0:
            events.check("server accepts connections", "ok", msg)
            events.output("waited_s", round(waited, 1))
            return 0
        if proc.returncode == 3:
            events.check("pg_isready", "failed", f"bad connection parameters: {msg}")
            return 2
        if waited + args.interval_s > args.deadline_s:
            events.check(
                "server accepts connections",
                "failed",
                f"no answer within {args.deadline_s:.0f}s ({msg}); is the server started and the host/port right?",
            )
            return 1
        time.sleep(args.interval_s)
